//! A client for ASP.NET WebForms pages that behaves like a browser: a click posts the form of
//! the page being answered with all its successful controls (hidden state included, disabled
//! ones left out) plus the clicked control, the way the page offered it (`__doPostBack` target,
//! submit button, or image button `.x`/`.y`).
//!
//! Pages are read as a browser reads them: parsed once into a DOM by the HTML parser
//! (html5ever, through `scraper`), so attribute values are decoded (`&#39;`, `&quot;`) whatever
//! the server encoded, quotes and attribute order do not matter, and postback targets are read
//! from the decoded JavaScript of every attribute. Nothing matches the raw HTML text. Page
//! reading is pure (HTML in, values out) and fetching is separate.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ego_tree::NodeRef;
use reqwest::Url;
use scraper::{ElementRef, Html, Node, Selector};

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
        "the portal rejected the postback of `{control}` on `{page}` (Invalid postback or callback argument): {}",
        fix(key, "the page changed between reading and posting it")
    )]
    Rejected {
        control: String,
        page: String,
        /// The `[canopus]` key that names the control, when it comes from the config.
        key: Option<&'static str>,
    },
    /// The page does not offer the control we meant to click.
    #[error(
        "the page `{page}` offers no control `{control}`: {}",
        fix(key, "the page changed under the client")
    )]
    NotOffered {
        control: String,
        page: String,
        /// The `[canopus]` key that names the control, when it comes from the config.
        key: Option<&'static str>,
    },
    /// A page without what it should hold.
    #[error("{0}")]
    Unexpected(String),
    /// May work later: network, timeouts, 5xx.
    #[error("{0}")]
    Transient(String),
}

/// The advice of a changed-page error: the `[canopus]` key when one can fix it.
fn fix(key: &Option<&'static str>, otherwise: &str) -> String {
    match key {
        Some(k) => format!("the portal changed; check `[canopus] {k}`"),
        None => otherwise.to_string(),
    }
}

impl PortalError {
    /// Names the `[canopus]` key of the control this error is about.
    pub fn for_key(self, k: &'static str) -> PortalError {
        match self {
            PortalError::NotOffered { control, page, .. } => PortalError::NotOffered {
                control,
                page,
                key: Some(k),
            },
            PortalError::Rejected { control, page, .. } => PortalError::Rejected {
                control,
                page,
                key: Some(k),
            },
            e => e,
        }
    }

    /// Whether the page did not hold what the step expected (worth saving for diagnosis).
    pub fn is_page_problem(&self) -> bool {
        matches!(
            self,
            PortalError::Rejected { .. }
                | PortalError::NotOffered { .. }
                | PortalError::Unexpected(_)
        )
    }
}

/// A page's form as a browser would post it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    pub action: String,
    /// Successful controls: hidden, text, selected options, checked boxes; not disabled ones.
    pub fields: Vec<(String, String)>,
    /// Submit and image buttons (posted only when clicked), by name, with their value.
    pub buttons: HashMap<String, String>,
}

/// A link of a page (`<a>`), with the postback target of its `href`/`onclick`, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageLink {
    pub id: String,
    pub target: Option<String>,
    pub text: String,
}

/// One row of a grid: its cells' text, the names of its image buttons, its links.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GridRow {
    pub cells: Vec<String>,
    pub images: Vec<String>,
    pub links: Vec<PageLink>,
}

/// What a page holds, read once from its DOM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub form: Option<Form>,
    /// Every `__doPostBack` / `WebForm_PostBackOptions` target the page offers.
    pub targets: HashSet<String>,
    pub links: Vec<PageLink>,
    /// Tables with an id: (id, data rows). Header rows (no `td`) are left out; rows of a nested
    /// table belong to the nested table.
    pub tables: Vec<(String, Vec<GridRow>)>,
    /// Elements with an id and some text: (id, text).
    pub texts: Vec<(String, String)>,
    /// The page's visible text (no scripts or styles), whitespace folded.
    pub text: String,
    /// URLs of `window.open(...)` calls, in scripts or attributes.
    pub windows: Vec<String>,
    /// `src` of `<embed>`/`<iframe>`, or `data` of `<object>`.
    pub embeds: Vec<String>,
}

/// A page as received.
#[derive(Debug, Clone)]
pub struct Page {
    pub url: Url,
    pub html: String,
    pub parsed: Parsed,
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

fn sel(s: &str) -> Selector {
    Selector::parse(s).expect("valid selector")
}

fn fold(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn text_of(e: ElementRef) -> String {
    fold(&e.text().collect::<Vec<_>>().join(" "))
}

/// The visible text under `node`: scripts, styles and templates left out.
fn visible_text(node: NodeRef<Node>, out: &mut String) {
    for child in node.children() {
        match child.value() {
            Node::Text(t) => {
                out.push(' ');
                out.push_str(t);
            }
            Node::Element(e)
                if matches!(e.name(), "script" | "style" | "template" | "noscript") => {}
            Node::Element(_) => visible_text(child, out),
            _ => {}
        }
    }
}

/// Reads the JavaScript string literal at the start of `s` (after blanks), also one nested in
/// another literal, whose quotes are backslash-escaped (`\'target\'`). Returns the string's
/// content and what follows it.
fn js_string(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    let (nested, s) = match s.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let quote = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let body = &s[1..];
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                (j, q) if q == quote && nested => return Some((out, &body[j + 1..])),
                (_, 'n') => out.push('\n'),
                (_, 't') => out.push('\t'),
                (_, other) => out.push(other),
            },
            c if c == quote => return Some((out, &body[i + 1..])),
            c => out.push(c),
        }
    }
    None
}

/// The first string argument of every call to `function` in a piece of JavaScript.
fn call_arguments(js: &str, function: &str) -> Vec<String> {
    let pattern = format!("{function}(");
    let mut found = Vec::new();
    let mut rest = js;
    while let Some(i) = rest.find(&pattern) {
        rest = &rest[i + pattern.len()..];
        if let Some((arg, _)) = js_string(rest) {
            found.push(arg);
        }
    }
    found
}

/// Postback targets named in a piece of (decoded) JavaScript.
fn postback_targets(js: &str) -> Vec<String> {
    let mut t = call_arguments(js, "__doPostBack");
    t.extend(call_arguments(js, "WebForm_PostBackOptions"));
    t.retain(|x| !x.is_empty());
    t
}

/// The nearest `table` ancestor of `e`.
fn owning_table(e: ElementRef) -> Option<ego_tree::NodeId> {
    e.ancestors()
        .find(|n| n.value().as_element().is_some_and(|x| x.name() == "table"))
        .map(|n| n.id())
}

fn link_of(a: ElementRef) -> PageLink {
    let v = a.value();
    let target = ["href", "onclick"]
        .iter()
        .filter_map(|k| v.attr(k))
        .flat_map(postback_targets)
        .next();
    PageLink {
        id: v.attr("id").unwrap_or("").to_string(),
        target,
        text: text_of(a),
    }
}

fn read_form(form: ElementRef) -> Form {
    let action = form.value().attr("action").unwrap_or("").to_string();
    let mut fields = Vec::new();
    let mut buttons = HashMap::new();
    for input in form.select(&sel("input, select, textarea, button")) {
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
            "button" => {
                let kind = v.attr("type").unwrap_or("submit").to_ascii_lowercase();
                if kind == "submit" {
                    buttons.insert(name.to_string(), v.attr("value").unwrap_or("").to_string());
                }
            }
            _ => match v
                .attr("type")
                .unwrap_or("text")
                .trim()
                .to_ascii_lowercase()
                .as_str()
            {
                "submit" | "image" => {
                    buttons.insert(name.to_string(), v.attr("value").unwrap_or("").to_string());
                }
                "button" | "reset" | "file" => {}
                "radio" | "checkbox" => {
                    if v.attr("checked").is_some() {
                        fields.push((
                            name.to_string(),
                            v.attr("value").unwrap_or("on").to_string(),
                        ));
                    }
                }
                _ => fields.push((name.to_string(), v.attr("value").unwrap_or("").to_string())),
            },
        }
    }
    Form {
        action,
        fields,
        buttons,
    }
}

impl Parsed {
    /// Reads everything the client uses from a page.
    pub fn read(html: &str) -> Parsed {
        let doc = Html::parse_document(html);
        let form = doc.select(&sel("form")).next().map(read_form);
        let mut targets = HashSet::new();
        let mut windows = Vec::new();
        let mut texts = Vec::new();
        for e in doc
            .root_element()
            .descendants()
            .filter_map(ElementRef::wrap)
        {
            let v = e.value();
            for (_, value) in v.attrs() {
                targets.extend(postback_targets(value));
                windows.extend(call_arguments(value, "window.open"));
            }
            if v.name() == "script" {
                let js: String = e.text().collect();
                targets.extend(postback_targets(&js));
                windows.extend(call_arguments(&js, "window.open"));
            }
            if let Some(id) = v.attr("id") {
                let t = text_of(e);
                if !t.is_empty() {
                    texts.push((id.to_string(), t));
                }
            }
        }
        // The `__doPostBack` function's own definition names no target.
        targets.retain(|t| t != "eventTarget");
        let links = doc.select(&sel("a")).map(link_of).collect();
        let mut tables = Vec::new();
        for table in doc.select(&sel("table[id]")) {
            let me = table.id();
            let rows = table
                .select(&sel("tr"))
                .filter(|tr| owning_table(*tr) == Some(me))
                .filter(|tr| tr.select(&sel("td")).any(|td| owning_table(td) == Some(me)))
                .map(|tr| GridRow {
                    cells: tr
                        .select(&sel("td"))
                        .filter(|td| owning_table(*td) == Some(me))
                        .map(text_of)
                        .collect(),
                    images: tr
                        .select(&sel("input"))
                        .filter(|i| {
                            i.value()
                                .attr("type")
                                .is_some_and(|t| t.trim().eq_ignore_ascii_case("image"))
                        })
                        .filter_map(|i| i.value().attr("name").map(str::to_string))
                        .collect(),
                    links: tr.select(&sel("a")).map(link_of).collect(),
                })
                .collect();
            tables.push((table.value().attr("id").unwrap_or("").to_string(), rows));
        }
        let mut text = String::new();
        visible_text(*doc.root_element(), &mut text);
        let embeds = doc
            .select(&sel("embed[src], iframe[src], object[data]"))
            .filter_map(|e| e.value().attr("src").or_else(|| e.value().attr("data")))
            .map(str::to_string)
            .collect();
        Parsed {
            form,
            targets,
            links,
            tables,
            texts,
            text: fold(&text),
            windows,
            embeds,
        }
    }
}

impl Page {
    /// A page as answered at `url`, read once.
    pub fn new(url: Url, html: String) -> Page {
        let parsed = Parsed::read(&html);
        Page { url, html, parsed }
    }

    /// The successful controls of the page's form, as a browser would post them, plus the
    /// names of its buttons (submit and image). `None` when the page has no form.
    pub fn form(&self) -> Option<&Form> {
        self.parsed.form.as_ref()
    }

    /// Whether the page offers `__doPostBack(target, ...)` (links and auto-postback controls).
    pub fn offers_postback(&self, target: &str) -> bool {
        self.parsed.targets.contains(target)
    }

    /// The links whose id contains `id_part` (e.g. `lnkGrupoCota`) and that post back.
    pub fn postback_links(&self, id_part: &str) -> Vec<&PageLink> {
        self.parsed
            .links
            .iter()
            .filter(|l| l.target.is_some() && l.id.contains(id_part))
            .collect()
    }

    /// The data rows of the first table whose id contains `id_part` (header rows skipped);
    /// `None` when there is no such table.
    pub fn grid(&self, id_part: &str) -> Option<&[GridRow]> {
        self.parsed
            .tables
            .iter()
            .find(|(id, _)| id.contains(id_part))
            .map(|(_, rows)| rows.as_slice())
    }

    /// The text of the first element whose id contains `id_part`.
    pub fn text_by_id(&self, id_part: &str) -> Option<&str> {
        self.parsed
            .texts
            .iter()
            .find(|(id, _)| id.contains(id_part))
            .map(|(_, t)| t.as_str())
    }

    /// The page's visible text, whitespace folded.
    pub fn text(&self) -> &str {
        &self.parsed.text
    }

    /// Whether the page's visible text holds `needle` (whitespace folded on both sides).
    pub fn says(&self, needle: &str) -> bool {
        !needle.trim().is_empty() && self.parsed.text.contains(&fold(needle))
    }

    /// The URL of the first `window.open(...)` of the page.
    pub fn window_open(&self) -> Option<&str> {
        self.parsed.windows.first().map(String::as_str)
    }

    /// The `src` of the page's `<embed>` (or `<iframe>`/`<object data>`).
    pub fn embed_src(&self) -> Option<&str> {
        self.parsed.embeds.first().map(String::as_str)
    }

    /// Resolves a link of this page.
    pub fn join(&self, link: &str) -> Result<Url, PortalError> {
        self.url.join(link.trim()).map_err(|_| {
            PortalError::Unexpected(format!("`{link}` on `{}` is not a URL", self.url.path()))
        })
    }
}

/// The last request of a session and what it answered, kept to diagnose a page that did not
/// hold what a step expected. Secret fields are redacted when it is recorded.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: &'static str,
    pub url: String,
    /// Posted fields (secrets redacted, long values shortened).
    pub fields: Vec<(String, String)>,
    pub status: u16,
    pub answered_url: String,
    pub body: String,
}

/// How requests are retried after a transient failure.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Extra tries of one request.
    pub retries: u32,
    /// The first wait; each next one doubles (with up to 50% jitter).
    pub backoff: Duration,
}

/// The browser: one cookie jar (one portal session), redirects followed.
pub struct Browser {
    http: reqwest::Client,
    base: Url,
    login_path: String,
    retry: Retry,
    /// Field names whose values never leave the process (the password).
    secret_fields: Vec<String>,
    requests: AtomicU64,
    last: Mutex<Option<Exchange>>,
}

impl Browser {
    pub fn new(
        base: &str,
        login_path: &str,
        timeout: Duration,
        retry: Retry,
        secret_fields: Vec<String>,
    ) -> anyhow::Result<Browser> {
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
            retry,
            secret_fields,
            requests: AtomicU64::new(0),
            last: Mutex::new(None),
        })
    }

    /// Requests sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The last request and its answer.
    pub fn last_exchange(&self) -> Option<Exchange> {
        self.last.lock().expect("last exchange").clone()
    }

    /// A URL under the portal's base (`path` starts with `/`).
    pub fn url(&self, path: &str) -> Result<Url, PortalError> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|_| PortalError::Unexpected(format!("`{path}` is not a path")))
    }

    /// GETs a page; `login` marks the login page itself (not an expiry).
    pub async fn get(&self, url: Url, login: bool) -> Result<Page, PortalError> {
        self.retrying(|| async {
            let resp = self.send(self.http.get(url.clone())).await?;
            self.page(resp, "GET", url.as_str(), &[], None, login).await
        })
        .await
    }

    /// GETs raw bytes (files).
    pub async fn bytes(&self, url: Url) -> Result<(Url, Vec<u8>), PortalError> {
        self.retrying(|| async {
            let resp = self.send(self.http.get(url.clone())).await?;
            let answered = resp.url().clone();
            let status = resp.status();
            if !status.is_success() {
                return Err(status_error(status, &answered));
            }
            self.check_login(&answered, false)?;
            let body = resp.bytes().await.map_err(|e| transient(&e))?;
            Ok((answered, body.to_vec()))
        })
        .await
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
        let not_offered = || PortalError::NotOffered {
            control: control.clone(),
            page: page.url.path().to_string(),
            key: None,
        };
        let form = page.form().ok_or_else(not_offered)?;
        let offered = match click {
            Click::Postback(t) => page.offers_postback(t),
            Click::Button(b) | Click::Image(b) => form.buttons.contains_key(b),
        };
        if !offered {
            return Err(not_offered());
        }
        let mut fields = form.fields.clone();
        let mut put = |k: &str, v: String| match fields.iter_mut().find(|(n, _)| n == k) {
            Some(f) => f.1 = v,
            None => fields.push((k.to_string(), v)),
        };
        for (k, v) in set {
            put(k, v.clone());
        }
        match click {
            Click::Postback(t) => {
                put("__EVENTTARGET", t.to_string());
                put("__EVENTARGUMENT", String::new());
            }
            Click::Button(b) => put(b, form.buttons.get(b).cloned().unwrap_or_default()),
            Click::Image(b) => {
                put(&format!("{b}.x"), "12".into());
                put(&format!("{b}.y"), "9".into());
            }
        }
        let target = page.join(if form.action.is_empty() {
            page.url.as_str()
        } else {
            &form.action
        })?;
        self.retrying(|| async {
            let resp = self
                .send(self.http.post(target.clone()).form(&fields))
                .await?;
            self.page(
                resp,
                "POST",
                target.as_str(),
                &fields,
                Some(&control),
                login,
            )
            .await
        })
        .await
    }

    /// Runs one request, again after a transient failure (with backoff), up to the retries.
    async fn retrying<T, F, Fut>(&self, attempt: F) -> Result<T, PortalError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, PortalError>>,
    {
        crate::retry::Backoff {
            retries: self.retry.retries,
            first: self.retry.backoff,
            jitter: 0.5,
            max_retry_after: None,
        }
        .run(
            "portal request",
            attempt,
            |e| matches!(e, PortalError::Transient(_)).then_some(None),
            |e, _| e,
        )
        .await
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, PortalError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        req.send().await.map_err(|e| transient(&e))
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
        method: &'static str,
        url: &str,
        fields: &[(String, String)],
        control: Option<&str>,
        login: bool,
    ) -> Result<Page, PortalError> {
        let answered = resp.url().clone();
        let status = resp.status();
        let html = resp.text().await.map_err(|e| transient(&e))?;
        let page = Page::new(answered, html);
        self.record(method, url, fields, status.as_u16(), &page);
        if status.is_server_error() && page.says("Invalid postback or callback argument") {
            return Err(PortalError::Rejected {
                control: control.unwrap_or("?").to_string(),
                page: page.url.path().to_string(),
                key: None,
            });
        }
        if !status.is_success() {
            return Err(status_error(status, &page.url));
        }
        self.check_login(&page.url, login)?;
        Ok(page)
    }

    fn record(
        &self,
        method: &'static str,
        url: &str,
        fields: &[(String, String)],
        status: u16,
        page: &Page,
    ) {
        let fields = fields
            .iter()
            .map(|(k, v)| {
                let v = if self.secret_fields.iter().any(|s| s == k) {
                    "(redacted)".to_string()
                } else if v.len() > 80 {
                    format!("({} characters)", v.len())
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect();
        *self.last.lock().expect("last exchange") = Some(Exchange {
            method,
            url: url.to_string(),
            fields,
            status,
            answered_url: page.url.to_string(),
            body: page.html.clone(),
        });
    }
}

fn status_error(status: reqwest::StatusCode, url: &Url) -> PortalError {
    let m = format!("the portal answered {status} to `{}`", url.path());
    if crate::retry::is_transient_status(status) {
        PortalError::Transient(m)
    } else {
        PortalError::Unexpected(m)
    }
}

fn transient(e: &reqwest::Error) -> PortalError {
    PortalError::Transient(crate::http::describe_error(e, "portal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(html: &str) -> Page {
        Page::new(
            Url::parse("http://portal/WWW/CONAT/frmBuscaCota.aspx").unwrap(),
            html.into(),
        )
    }

    /// The page ASP.NET 4 writes: attribute values HTML-encoded.
    const FORM: &str = r#"<form method="post" action="./frmBuscaCota.aspx">
<input type="hidden" name="__VIEWSTATE" value="vs1" />
<input type="hidden" name="__EVENTVALIDATION" value="ev1" />
<select name="ctl00$Conteudo$cbxCriterioBusca" onchange="javascript:setTimeout(&#39;__doPostBack(\&#39;ctl00$Conteudo$cbxCriterioBusca\&#39;,\&#39;\&#39;)&#39;, 0)">
<option value="G">Grupo</option><option selected="selected" value="F">CPF</option></select>
<input name="ctl00$Conteudo$edtContextoBusca" type="text" disabled="disabled" />
<input type="radio" name="tipo" value="BA" /><input type="radio" name="tipo" value="CA" checked="checked" />
<input type="submit" name="ctl00$Conteudo$btnBuscar" value="Buscar" onclick="javascript:WebForm_DoPostBackWithOptions(new WebForm_PostBackOptions(&quot;ctl00$Conteudo$btnBuscar&quot;, &quot;&quot;, true, &quot;&quot;, &quot;&quot;, false, false))" />
<input type="IMAGE" name="ctl00$Conteudo$grd$ctl02$imgEmite_Boleto" src="x.gif" />
<table id="ctl00_Conteudo_grdBuscaAvancada"><tr><th>Cota</th></tr>
<tr><td><a id="ctl00_Conteudo_grdBuscaAvancada_ctl02_lnkGrupoCota" href="javascript:__doPostBack(&#39;ctl00$Conteudo$grdBuscaAvancada$ctl02$lnkGrupoCota&#39;,&#39;&#39;)">001234/0567</a></td><td>10/11/2025</td></tr>
</table>
<script>window.open("../CONCM/frmConCmImpressao.aspx?id=P1&tipo=BA", "Impressao");</script>
</form>"#;

    #[test]
    fn the_form_is_posted_as_a_browser_would() {
        let p = page(FORM);
        let form = p.form().unwrap();
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
        assert_eq!(
            form.buttons
                .get("ctl00$Conteudo$btnBuscar")
                .map(String::as_str),
            Some("Buscar")
        );
        assert!(
            form.buttons
                .contains_key("ctl00$Conteudo$grd$ctl02$imgEmite_Boleto"),
            "an image button whatever the case of its type"
        );
    }

    #[test]
    fn encoded_postbacks_links_grids_and_windows_are_read() {
        let p = page(FORM);
        assert!(
            p.offers_postback("ctl00$Conteudo$cbxCriterioBusca"),
            "encoded and escaped inside setTimeout"
        );
        assert!(p.offers_postback("ctl00$Conteudo$grdBuscaAvancada$ctl02$lnkGrupoCota"));
        assert!(
            p.offers_postback("ctl00$Conteudo$btnBuscar"),
            "WebForm_PostBackOptions with &quot;"
        );
        assert!(!p.offers_postback("ctl00$Conteudo$outro"));
        let links = p.postback_links("lnkGrupoCota");
        assert_eq!(links.len(), 1);
        assert_eq!(
            links[0].target.as_deref(),
            Some("ctl00$Conteudo$grdBuscaAvancada$ctl02$lnkGrupoCota")
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
    fn quotes_attribute_order_and_case_do_not_matter() {
        let variants = [
            r#"<a href="javascript:__doPostBack('ctl00$A','')" id="x_lnk">1/2</a>"#,
            r#"<a id='x_lnk' href='javascript:__doPostBack(&#39;ctl00$A&#39;,&#39;&#39;)'>1/2</a>"#,
            r#"<A ID="x_lnk" HREF="javascript:__doPostBack(&quot;ctl00$A&quot;,&quot;&quot;)">1/2</A>"#,
            r#"<a id=x_lnk href="JavaScript: __doPostBack( 'ctl00$A' , '' )">1/2</a>"#,
            r##"<a id="x_lnk" href="#" onclick="__doPostBack(&#x27;ctl00$A&#x27;,&#x27;&#x27;); return false;">1/2</a>"##,
        ];
        for v in variants {
            let p = page(&format!("<form>{v}</form>"));
            let links = p.postback_links("lnk");
            assert_eq!(links.len(), 1, "{v}");
            assert_eq!(links[0].target.as_deref(), Some("ctl00$A"), "{v}");
            assert!(p.offers_postback("ctl00$A"), "{v}");
        }
    }

    #[test]
    fn a_window_open_in_an_attribute_is_decoded() {
        let p = page(
            r#"<input type="button" onclick="window.open(&#39;Imp.aspx?a=1&amp;b=2&#39;)" />"#,
        );
        assert_eq!(p.window_open().unwrap(), "Imp.aspx?a=1&b=2");
    }

    #[test]
    fn nested_tables_keep_their_own_rows_and_text_skips_scripts() {
        let p = page(
            r#"<table id="grdA"><tr><td>a1</td><td><table id="inner"><tr><td>i1</td></tr></table></td></tr></table>
<script>var x = "not text";</script><p>CPF/CNPJ: 123.456.789-09</p>"#,
        );
        assert_eq!(p.grid("grdA").unwrap().len(), 1);
        assert_eq!(p.grid("inner").unwrap()[0].cells, vec!["i1"]);
        assert!(p.says("CPF/CNPJ: 123.456.789-09"));
        assert!(!p.says("not text"));
    }

    #[test]
    fn js_strings_nested_in_strings_are_read() {
        assert_eq!(
            call_arguments(
                r"setTimeout('__doPostBack(\'a$b\',\'\')', 0)",
                "__doPostBack"
            ),
            vec!["a$b"]
        );
        assert_eq!(
            call_arguments(r#"__doPostBack("a$b", "")"#, "__doPostBack"),
            vec!["a$b"]
        );
        assert_eq!(
            call_arguments(r#"window.open("x.aspx?a=1\/2")"#, "window.open"),
            vec!["x.aspx?a=1/2"]
        );
        assert!(call_arguments("__doPostBack(", "__doPostBack").is_empty());
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

    /// A random WebForms page: what it holds, and three ways of writing it.
    struct RandomPage {
        hidden: Vec<(String, String)>,
        criterion: String,
        options: Vec<String>,
        selected: usize,
        button: (String, String),
        links: Vec<(String, String)>,
        window: String,
    }

    #[derive(Clone, Copy)]
    enum Writing {
        /// ASP.NET 4: double quotes, `&#39;` and `&quot;`.
        Encoded,
        /// Apostrophes raw inside double quotes.
        Plain,
        /// Single quotes, `&#x27;`, upper-case names.
        SingleHex,
    }

    fn word(rng: &mut fastrand::Rng, alphabet: &[char], len: std::ops::Range<usize>) -> String {
        (0..rng.usize(len))
            .map(|_| alphabet[rng.usize(..alphabet.len())])
            .collect()
    }

    impl RandomPage {
        fn new(rng: &mut fastrand::Rng) -> RandomPage {
            let id: Vec<char> = "abcXYZ019_".chars().collect();
            let any: Vec<char> = "aZ9 '\"&<>$/=;:é%#()".chars().collect();
            let target =
                |rng: &mut fastrand::Rng| format!("ctl00$Conteudo${}", word(rng, &id, 1..12));
            RandomPage {
                hidden: (0..rng.usize(1..5))
                    .map(|i| {
                        (
                            format!("__H{i}{}", word(rng, &id, 0..4)),
                            word(rng, &any, 0..30),
                        )
                    })
                    .collect(),
                criterion: target(rng),
                options: (0..rng.usize(1..4))
                    .map(|_| word(rng, &any, 1..6))
                    .collect(),
                selected: 0,
                button: (target(rng), word(rng, &any, 0..8)),
                links: (0..rng.usize(0..6))
                    .map(|_| (target(rng), word(rng, &['1', '2', '/', 'A'], 0..8)))
                    .collect(),
                window: format!(
                    "Imp.aspx?id={}&t={}",
                    word(rng, &id, 1..5),
                    word(rng, &id, 0..3)
                ),
            }
        }

        fn element(
            &self,
            w: Writing,
            rng: &mut fastrand::Rng,
            name: &str,
            attrs: &[(&str, &str)],
            inner: Option<&str>,
        ) -> String {
            let mut attrs = attrs.to_vec();
            rng.shuffle(&mut attrs);
            let mut out = format!("<{name}");
            for (k, v) in attrs {
                let amp = v.replace('&', "&amp;");
                out.push_str(&match w {
                    Writing::Encoded => format!(
                        " {k}=\"{}\"",
                        amp.replace('"', "&quot;")
                            .replace('\'', "&#39;")
                            .replace('<', "&lt;")
                            .replace('>', "&gt;")
                    ),
                    Writing::Plain => format!(" {k}=\"{}\"", amp.replace('"', "&quot;")),
                    Writing::SingleHex => {
                        format!(" {} = '{}'", k.to_uppercase(), amp.replace('\'', "&#x27;"))
                    }
                });
            }
            match inner {
                Some(i) => format!("{out}>{i}</{name}>"),
                None => format!("{out} />"),
            }
        }

        fn render(&self, w: Writing, rng: &mut fastrand::Rng) -> String {
            let mut body = String::new();
            for (k, v) in &self.hidden {
                body.push_str(&self.element(
                    w,
                    rng,
                    "input",
                    &[("type", "hidden"), ("name", k), ("value", v)],
                    None,
                ));
            }
            let options: String = self
                .options
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    let mut a = vec![("value", o.as_str())];
                    if i == self.selected {
                        a.push(("selected", "selected"));
                    }
                    self.element(w, rng, "option", &a, Some("x"))
                })
                .collect();
            let onchange = format!(
                "javascript:setTimeout('__doPostBack(\\'{}\\',\\'\\')', 0)",
                self.criterion
            );
            body.push_str(&self.element(
                w,
                rng,
                "select",
                &[("name", &self.criterion), ("onchange", &onchange)],
                Some(&options),
            ));
            let onclick = format!(
                "javascript:WebForm_DoPostBackWithOptions(new WebForm_PostBackOptions(\"{}\", \"\", true, \"\", \"\", false, false))",
                self.button.0
            );
            body.push_str(&self.element(
                w,
                rng,
                "input",
                &[
                    ("type", "submit"),
                    ("name", &self.button.0),
                    ("value", &self.button.1),
                    ("onclick", &onclick),
                ],
                None,
            ));
            let mut rows = String::new();
            for (i, (target, text)) in self.links.iter().enumerate() {
                let href = format!("javascript:__doPostBack('{target}','')");
                let id = format!("grd_ctl{i:02}_lnkGrupoCota");
                rows.push_str(&format!(
                    "<tr><td>{}</td></tr>",
                    self.element(w, rng, "a", &[("id", &id), ("href", &href)], Some(text))
                ));
            }
            body.push_str(&self.element(w, rng, "table", &[("id", "grdBusca")], Some(&rows)));
            format!(
                "<html><body><form method=\"post\" action=\"./p.aspx\">{body}</form><script>window.open(\"{}\");</script></body></html>",
                self.window
            )
        }
    }

    /// A property test: whatever the page holds and however it is written (encoded, plain or
    /// single-quoted; attributes in any order), it reads the same, and it reads what it holds.
    #[test]
    fn random_pages_read_the_same_however_they_are_written() {
        for seed in 0..400 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let page = RandomPage::new(&mut rng);
            let encoded = Parsed::read(&page.render(Writing::Encoded, &mut rng));
            for w in [Writing::Plain, Writing::SingleHex] {
                let other = Parsed::read(&page.render(w, &mut rng));
                assert_eq!(encoded.form, other.form, "seed {seed}");
                assert_eq!(encoded.targets, other.targets, "seed {seed}");
                assert_eq!(encoded.links, other.links, "seed {seed}");
                assert_eq!(encoded.tables, other.tables, "seed {seed}");
                assert_eq!(encoded.windows, other.windows, "seed {seed}");
            }
            let form = encoded.form.as_ref().unwrap();
            let mut expected = page.hidden.clone();
            expected.push((page.criterion.clone(), page.options[page.selected].clone()));
            assert_eq!(form.fields, expected, "seed {seed}");
            assert_eq!(
                form.buttons.get(&page.button.0),
                Some(&page.button.1),
                "seed {seed}"
            );
            let mut targets: HashSet<String> = page.links.iter().map(|(t, _)| t.clone()).collect();
            targets.insert(page.criterion.clone());
            targets.insert(page.button.0.clone());
            assert_eq!(encoded.targets, targets, "seed {seed}");
            let read: Vec<(String, String)> = encoded
                .links
                .iter()
                .map(|l| (l.target.clone().unwrap(), l.text.clone()))
                .collect();
            assert_eq!(read, page.links, "seed {seed}");
            assert_eq!(encoded.windows, vec![page.window.clone()], "seed {seed}");
        }
    }
}
