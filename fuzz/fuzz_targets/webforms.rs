//! A WebForms page as a portal might answer it: reading its form, grids, postback links and
//! PDF pointers never panics, whatever the HTML.
#![no_main]
use crm_jobs::canopus::webforms::Page;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let html = String::from_utf8_lossy(data).into_owned();
    let page = Page::new("http://portal.test/WebForms/Page.aspx".parse().unwrap(), html);
    let _ = page.form();
    let _ = page.grid("grd");
    let _ = page.postback_links("lnk");
    let _ = page.offers_postback("ctl00$btn");
    let _ = page.text_by_id("lbl");
    let _ = page.window_open();
    let _ = page.says("Selecione um registro válido");
    if let Some(src) = page.embed_src() {
        let _ = page.join(src);
    }
});
