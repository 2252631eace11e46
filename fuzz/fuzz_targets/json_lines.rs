//! A line of ERP changes (`enqueue`): any line is taken or refused with a reason; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        let resources = crm_jobs::config::CrmConfig::default().resources;
        let _ = crm_jobs::jobs::enqueue::parse_line(line, &resources);
    }
});
