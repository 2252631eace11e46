//! Money: any text or JSON value either parses to centavos or is refused; never a panic, and a
//! parsed amount formats and parses back to itself.
#![no_main]
use crm_jobs::domain::money::{centavos_from_json, format_brl, parse_brl};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = parse_brl(text)
        && c >= 0
    {
        assert_eq!(parse_brl(&format_brl(c)), Ok(c), "{text:?}");
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        let _ = centavos_from_json(&v);
    }
});
