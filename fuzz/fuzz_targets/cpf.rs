//! CPF: any text parses or is refused; a parsed CPF survives its own formatting.
#![no_main]
use crm_jobs::domain::cpf::Cpf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Cpf::parse(text) {
        assert_eq!(Cpf::parse(&c.formatted()).ok(), Some(c.clone()), "{text:?}");
        assert_eq!(c.digits().len(), 11);
    }
});
