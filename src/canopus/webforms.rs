//! A client for ASP.NET WebForms pages that behaves like a browser: a click posts the form of
//! the page being answered with all its successful controls (hidden state included, disabled
//! ones left out) plus the clicked control, the way the page offered it (`__doPostBack` target,
//! submit button, or image button `.x`/`.y`). Page reading is pure (HTML in, values out) and
//! fetching is separate.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Url;
use scraper::{ElementRef, Html, Selector};

/// How a portal step failed, by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// The portal sent us to its login page: log in again, then go on.
    #[error("the portal session expired (it answered with its login page)")]
    SessionExpired,
    /// Credentials refused: stop this sales point.
    #[error("login refused by the portal: {0}")]
    LoginFailed(String),
    /// The portal answered ASP.NET's "Invalid postback or callback argument".
    #[error(
        "the portal rejected the postback of `{control}` on `{page}` (Invalid postback or callback argument): the page changed, or the control name in `[canopus]` is wrong"
    )]
    Rejected { control: String, page: String },
    /// The page does not offer the control we meant to click.
    #[error(
        "the page `{page}` offers no control `{control}`: the portal changed; check `[canopus]`"
    )]
    NotOffered { control: String, page: String },
    /// A page without what it should hold.
    #[error("{0}")]
    Unexpected(String),
    /// May work later: network, timeouts, 5xx.
    #[error("{0}")]
    Transient(String),
}

/// A page as received.
#[derive(Debug, Clone)]
pub struct Page {
    pub url: Url,
    pub html: String,
}

/// What a click is.
#[derive(Debug, Clone, Copy)]
pub enum Click<'a> {
    /// A link or auto-postback control: `__doPostBack(target, '')`.
    Postback(&'a str),
    /// A submit button, posted as `name=value`.
    Button(&'a str),
    /// An image button, posted as `name.x` and `name.y`.
    Image(&'a str),
}

impl Click<'_> {
    fn control(&self) -> &str {
        match self {
            Click::Postback(c) | Click::Button(c) | Click::Image(c) => c,
        }
    }
}

/// A page's form as a browser would post it.
#[derive(Debug, Clone)]
pub struct Form {
    pub action: String,
    /// Successful controls: hidden, text, selected options, checked boxes; not disabled ones.
    pub fields: Vec<(String, String)>,
    /// Names of submit and image buttons (posted only when clicked).
    pub buttons: HashSet<String>,
}

/// A `__doPostBack` link of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostbackLink {
    pub id: String,
    pub target: String,
    pub text: String,
}

/// One row of a grid: its cells' text and the names of its image buttons.
#[derive(Debug, Clone, Default)]
pub struct GridRow {
    pub cells: Vec<String>,
    pub images: Vec<String>,
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).expect("valid selector")
}

fn text_of(e: ElementRef) -> String {
    e.text()
        .collect::<Vec<_>>()
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl Page {
    /// The successful controls of the page's form, as a browser would post them, plus the
    /// names of its buttons (submit and image). `None` when the page has no form.
    pub fn form(&self) -> Option<Form> {
        let doc = Html::parse_document(&self.html);
        let form = doc.select(&sel("form")).next()?;
        let action = form.value().attr("action").unwrap_or("").to_string();
        let mut fields = Vec::new();
        let mut buttons = HashSet::new();
        for input in form.select(&sel("input, select, textarea")) {
            let v = input.value();
            let Some(name) = v.attr("name") else { continue };
            if v.attr("disabled").is_some() {
                continue;
            }
            match v.name() {
                "select" => {
                    let chosen = input
                        .select(&sel("option[selected]"))
                        .next()
                        .or_else(|| input.select(&sel("option")).next());
                    if let Some(o) = chosen {
                        let value = o
                            .value()
                            .attr("value")
                            .map(str::to_string)
                            .unwrap_or_else(|| text_of(o));
                        fields.push((name.to_string(), value));
                    }
                }
                "textarea" => fields.push((name.to_string(), input.text().collect())),
                _ => match v
                    .attr("type")
                    .unwrap_or("text")
                    .to_ascii_lowercase()
                    .as_str()
                {
                    "submit" | "image" | "button" | "reset" => {
                        buttons.insert(name.to_string());
                    }
                    "radio" | "checkbox" => {
                        if v.attr("checked").is_some() {
                            fields.push((
                                name.to_string(),
                                v.attr("value").unwrap_or("on").to_string(),
                            ));
                        }
                    }
                    "file" => {}
                    _ => fields.push((name.to_string(), v.attr("value").unwrap_or("").to_string())),
                },
            }
        }
        Some(Form {
            action,
            fields,
            buttons,
        })
    }

    /// Whether the page offers `__doPostBack(target, ...)` (links and auto-postback controls).
    pub fn offers_postback(&self, target: &str) -> bool {
        self.html.contains(&format!("__doPostBack('{target}'"))
            || self.html.contains(&format!("__doPostBack(\\'{target}\\'"))
    }

    /// The `__doPostBack` links whose id contains `id_part` (e.g. `lnkGrupoCota`).
    pub fn postback_links(&self, id_part: &str) -> Vec<PostbackLink> {
        let doc = Html::parse_document(&self.html);
        doc.select(&sel("a[href]"))
            .filter_map(|a| {
                let id = a.value().attr("id").unwrap_or("");
                if !id.contains(id_part) {
                    return None;
                }
                let href = a.value().attr("href")?;
                let start = href.find("__doPostBack('")? + "__doPostBack('".len();
                let target = href[start..].split('\'').next()?.to_string();
                Some(PostbackLink {
                    id: id.to_string(),
                    target,
                    text: text_of(a),
                })
            })
            .collect()
    }

    /// The data rows of the first table whose id contains `id_part` (header rows skipped);
    /// `None` when there is no such table.
    pub fn grid(&self, id_part: &str) -> Option<Vec<GridRow>> {
        let doc = Html::parse_document(&self.html);
        let table = doc
            .select(&sel("table[id]"))
            .find(|t| t.value().attr("id").is_some_and(|id| id.contains(id_part)))?;
        let rows = table
            .select(&sel("tr"))
            .filter(|tr| tr.select(&sel("td")).next().is_some())
            .map(|tr| GridRow {
                cells: tr.select(&sel("td")).map(text_of).collect(),
                images: tr
                    .select(&sel("input[type=image]"))
                    .filter_map(|i| i.value().attr("name").map(str::to_string))
                    .collect(),
            })
            .collect();
        Some(rows)
    }

    /// The text of the first element whose id contains `id_part`.
    pub fn text_by_id(&self, id_part: &str) -> Option<String> {
        let doc = Html::parse_document(&self.html);
        doc.select(&sel("[id]"))
            .find(|e| e.value().attr("id").is_some_and(|id| id.contains(id_part)))
            .map(text_of)
            .filter(|t| !t.is_empty())
    }

    /// The URL of a `window.open("...")` in the page's scripts.
    pub fn window_open(&self) -> Option<String> {
        let start = self.html.find("window.open(")? + "window.open(".len();
        let rest = self.html[start..].trim_start();
        let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        rest[1..]
            .split(quote)
            .next()
            .map(|u| u.replace("&amp;", "&"))
    }

    /// The `src` of the page's `<embed>` (or `<iframe>`/`<object data>`).
    pub fn embed_src(&self) -> Option<String> {
        let doc = Html::parse_document(&self.html);
        doc.select(&sel("embed[src], iframe[src]"))
            .next()
            .and_then(|e| e.value().attr("src").map(str::to_string))
            .or_else(|| {
                doc.select(&sel("object[data]"))
                    .next()
                    .and_then(|e| e.value().attr("data").map(str::to_string))
            })
    }

    /// Resolves a link of this page.
    pub fn join(&self, link: &str) -> Result<Url, PortalError> {
        self.url.join(link).map_err(|_| {
            PortalError::Unexpected(format!("`{link}` on `{}` is not a URL", self.url.path()))
        })
    }
}

/// The browser: one cookie jar (one portal session), redirects followed.
pub struct Browser {
    http: reqwest::Client,
    base: Url,
    login_path: String,
    requests: AtomicU64,
}

impl Browser {
    pub fn new(base: &str, login_path: &str, timeout: Duration) -> anyhow::Result<Browser> {
        let base = Url::parse(&format!("{}/", base.trim_end_matches('/')))?;
        let http = crate::http::builder()
            .user_agent(concat!(
                "Mozilla/5.0 (compatible; crm-jobs/",
                env!("CARGO_PKG_VERSION"),
                ")"
            ))
            .cookie_store(true)
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Browser {
            http,
            base,
            login_path: login_path.to_ascii_lowercase(),
            requests: AtomicU64::new(0),
        })
    }

    /// Requests sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// A URL under the portal's base (`path` starts with `/`).
    pub fn url(&self, path: &str) -> Result<Url, PortalError> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|_| PortalError::Unexpected(format!("`{path}` is not a path")))
    }

    /// GETs a page; `login` marks the login page itself (not an expiry).
    pub async fn get(&self, url: Url, login: bool) -> Result<Page, PortalError> {
        let resp = self.send(self.http.get(url)).await?;
        self.page(resp, None, login).await
    }

    /// GETs raw bytes (files).
    pub async fn bytes(&self, url: Url) -> Result<(Url, Vec<u8>), PortalError> {
        let resp = self.send(self.http.get(url)).await?;
        let url = resp.url().clone();
        self.check_status(&resp, None, &url)?;
        self.check_login(&url, false)?;
        let body = resp.bytes().await.map_err(|e| transient(&e))?;
        Ok((url, body.to_vec()))
    }

    /// Clicks a control of `page`, with `set` overriding form fields.
    pub async fn click(
        &self,
        page: &Page,
        click: Click<'_>,
        set: &[(&str, String)],
        login: bool,
    ) -> Result<Page, PortalError> {
        let control = click.control().to_string();
        let Some(Form {
            action,
            mut fields,
            buttons,
        }) = page.form()
        else {
            return Err(PortalError::NotOffered {
                control,
                page: page.url.path().to_string(),
            });
        };
        let offered = match click {
            Click::Postback(t) => page.offers_postback(t),
            Click::Button(b) | Click::Image(b) => buttons.contains(b),
        };
        if !offered {
            return Err(PortalError::NotOffered {
                control,
                page: page.url.path().to_string(),
            });
        }
        for (k, v) in set {
            match fields.iter_mut().find(|(n, _)| n == k) {
                Some(f) => f.1 = v.clone(),
                None => fields.push((k.to_string(), v.clone())),
            }
        }
        let mut put = |k: &str, v: String| match fields.iter_mut().find(|(n, _)| n == k) {
            Some(f) => f.1 = v,
            None => fields.push((k.to_string(), v)),
        };
        match click {
            Click::Postback(t) => {
                put("__EVENTTARGET", t.to_string());
                put("__EVENTARGUMENT", String::new());
            }
            Click::Button(b) => {
                let value = button_value(&page.html, b);
                put(b, value);
            }
            Click::Image(b) => {
                put(&format!("{b}.x"), "12".into());
                put(&format!("{b}.y"), "9".into());
            }
        }
        let target = page.join(if action.is_empty() {
            page.url.as_str()
        } else {
            &action
        })?;
        let resp = self.send(self.http.post(target).form(&fields)).await?;
        self.page(resp, Some(&control), login).await
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, PortalError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        req.send().await.map_err(|e| transient(&e))
    }

    fn check_status(
        &self,
        resp: &reqwest::Response,
        control: Option<&str>,
        url: &Url,
    ) -> Result<(), PortalError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        if status.is_server_error() || status.as_u16() == 429 {
            let _ = control;
            return Err(PortalError::Transient(format!(
                "the portal answered {status} to `{}`",
                url.path()
            )));
        }
        Err(PortalError::Unexpected(format!(
            "the portal answered {status} to `{}`",
            url.path()
        )))
    }

    fn check_login(&self, url: &Url, login: bool) -> Result<(), PortalError> {
        if !login && url.path().to_ascii_lowercase().ends_with(&self.login_path) {
            return Err(PortalError::SessionExpired);
        }
        Ok(())
    }

    async fn page(
        &self,
        resp: reqwest::Response,
        control: Option<&str>,
        login: bool,
    ) -> Result<Page, PortalError> {
        let url = resp.url().clone();
        let status = resp.status();
        let html = resp.text().await.map_err(|e| transient(&e))?;
        if status.is_server_error() && html.contains("Invalid postback or callback argument") {
            return Err(PortalError::Rejected {
                control: control.unwrap_or("?").to_string(),
                page: url.path().to_string(),
            });
        }
        if !status.is_success() {
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                PortalError::Transient(format!("the portal answered {status} to `{}`", url.path()))
            } else {
                PortalError::Unexpected(format!("the portal answered {status} to `{}`", url.path()))
            });
        }
        self.check_login(&url, login)?;
        Ok(Page { url, html })
    }
}

fn button_value(html: &str, name: &str) -> String {
    let doc = Html::parse_document(html);
    doc.select(&sel("input"))
        .find(|i| i.value().attr("name") == Some(name))
        .and_then(|i| i.value().attr("value").map(str::to_string))
        .unwrap_or_default()
}

fn transient(e: &reqwest::Error) -> PortalError {
    PortalError::Transient(crate::http::describe_error(e, "portal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(html: &str) -> Page {
        Page {
            url: Url::parse("http://portal/WWW/CONAT/frmBuscaCota.aspx").unwrap(),
            html: html.into(),
        }
    }

    const FORM: &str = r#"<form method="post" action="./frmBuscaCota.aspx">
<input type="hidden" name="__VIEWSTATE" value="vs1" />
<input type="hidden" name="__EVENTVALIDATION" value="ev1" />
<select name="ctl00$Conteudo$cbxCriterioBusca" onchange="javascript:setTimeout('__doPostBack(\'ctl00$Conteudo$cbxCriterioBusca\',\'\')', 0)">
<option value="G">Grupo</option><option selected="selected" value="F">CPF</option></select>
<input name="ctl00$Conteudo$edtContextoBusca" type="text" disabled="disabled" />
<input type="radio" name="tipo" value="BA" /><input type="radio" name="tipo" value="CA" checked="checked" />
<input type="submit" name="ctl00$Conteudo$btnBuscar" value="Buscar" />
<input type="image" name="ctl00$Conteudo$grd$ctl02$imgEmite_Boleto" src="x.gif" />
<table id="ctl00_Conteudo_grdBuscaAvancada"><tr><th>Cota</th></tr>
<tr><td><a id="ctl00_Conteudo_grdBuscaAvancada_ctl02_lnkGrupoCota" href="javascript:__doPostBack('ctl00$Conteudo$grdBuscaAvancada$ctl02$lnkGrupoCota','')">001234/0567</a></td><td>10/11/2025</td></tr>
</table>
<script>window.open("../CONCM/frmConCmImpressao.aspx?id=P1&amp;tipo=BA", "Impressao");</script>
</form>"#;

    #[test]
    fn the_form_is_posted_as_a_browser_would() {
        let form = page(FORM).form().unwrap();
        assert_eq!(form.action, "./frmBuscaCota.aspx");
        let get = |n: &str| {
            form.fields
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("__VIEWSTATE"), Some("vs1"));
        assert_eq!(get("ctl00$Conteudo$cbxCriterioBusca"), Some("F"));
        assert_eq!(get("tipo"), Some("CA"), "only the checked radio");
        assert_eq!(
            get("ctl00$Conteudo$edtContextoBusca"),
            None,
            "disabled fields are not posted"
        );
        assert_eq!(
            get("ctl00$Conteudo$btnBuscar"),
            None,
            "buttons only when clicked"
        );
        assert!(form.buttons.contains("ctl00$Conteudo$btnBuscar"));
        assert!(
            form.buttons
                .contains("ctl00$Conteudo$grd$ctl02$imgEmite_Boleto")
        );
    }

    #[test]
    fn postbacks_links_grids_and_windows_are_read() {
        let p = page(FORM);
        assert!(
            p.offers_postback("ctl00$Conteudo$cbxCriterioBusca"),
            "escaped inside setTimeout"
        );
        assert!(p.offers_postback("ctl00$Conteudo$grdBuscaAvancada$ctl02$lnkGrupoCota"));
        assert!(!p.offers_postback("ctl00$Conteudo$outro"));
        let links = p.postback_links("lnkGrupoCota");
        assert_eq!(links.len(), 1);
        assert_eq!(
            links[0].target,
            "ctl00$Conteudo$grdBuscaAvancada$ctl02$lnkGrupoCota"
        );
        assert_eq!(links[0].text, "001234/0567");
        let grid = p.grid("grdBuscaAvancada").unwrap();
        assert_eq!(grid.len(), 1, "the header row is skipped");
        assert_eq!(grid[0].cells, vec!["001234/0567", "10/11/2025"]);
        assert_eq!(
            p.window_open().unwrap(),
            "../CONCM/frmConCmImpressao.aspx?id=P1&tipo=BA"
        );
        assert!(p.grid("grdBoleto").is_none());
    }

    #[test]
    fn the_wrapper_embed_is_found() {
        let p = page(
            r#"<html><body><embed width="100%" src="Boleto.ashx?id=P1" type="application/pdf" /></body></html>"#,
        );
        assert_eq!(p.embed_src().unwrap(), "Boleto.ashx?id=P1");
        assert_eq!(
            p.join("Boleto.ashx?id=P1").unwrap().as_str(),
            "http://portal/WWW/CONAT/Boleto.ashx?id=P1"
        );
    }
}
