//! Boleto: a linha digitável or barcode either validates or is refused; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crm_jobs::domain::boleto::validate_any(text);
    }
});
