//! A consultant's spreadsheet: any bytes saved as .xlsx are read or refused; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("crm-jobs-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("PLANILHA.xlsx");
    std::fs::write(&path, data).unwrap();
    let _ = crm_jobs::spreadsheet::read_clients(&path);
});
