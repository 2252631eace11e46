//! The sandbox's Canopus portal (docs/src/reference/services.md#canopus-portal), a faithful ASP.NET
//! WebForms imitation: every page carries hidden state that must be posted back from the page being
//! answered, event validation rejects postbacks the page did not offer, the search criterion is an
//! auto-postback, quota links are `__doPostBack` UniqueIDs, the emit button is an image button,
//! user codes are zero-padded, sessions expire to the login page, and the printed boleto is an HTML
//! wrapper labelled `application/pdf` in front of the real PDF.
//!
//! Written from docs/src/reference/services.md#canopus-portal rather than from the client: pages
//! are rendered the ASP.NET 4 way by default (attribute values HTML-encoded, `&#39;` inside
//! `__doPostBack`), and in other [`Dress`]es a client tuned to one rendering fails on; the result
//! grid starts with a link that is not a quota (posting it answers "Selecione um registro válido."
//! and leaves the session on its previous client); the client page shows the client's CPF; sessions
//! can be capped at a number of requests; and the PDF names the client, CPF and quota it belongs
//! to, so that tests check a file's owner by its content. Downloads are counted per quota.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use chrono::NaiveDate;

use super::faults::{Faults, Route};

const PREFIX: &str = "/canopus";
const LOGIN: &str = "/canopus/WWW/frmCorCCCnsLogin.aspx";
const MAIN: &str = "/canopus/WWW/frmMain.aspx";
const SEARCH: &str = "/canopus/WWW/CONAT/frmBuscaCota.aspx";
const CLIENT: &str = "/canopus/WWW/CONAT/frmConAtCnsAtendimento.aspx";
const BOLETOS: &str = "/canopus/WWW/CONCO/frmConCoRelBoletoAvulso.aspx";
const PRINT: &str = "/canopus/WWW/CONCM/frmConCmImpressao.aspx";
const FILE: &str = "/canopus/WWW/CONCM/Boleto.ashx";

const CRITERION: &str = "ctl00$Conteudo$cbxCriterioBusca";
const SEARCH_TEXT: &str = "ctl00$Conteudo$edtContextoBusca";
const SEARCH_BUTTON: &str = "ctl00$Conteudo$btnBuscar";
const EMIT_BUTTON: &str = "ctl00$Conteudo$btnEmitir";
const EMIT_DATE: &str = "ctl00$Conteudo$edtDT_Compensacao";
const EMIT_KIND: &str = "ctl00$Conteudo$rdlTipoEmissao";

/// How the portal writes its HTML.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dress {
    /// ASP.NET 4: double-quoted attributes, values HTML-encoded (`&#39;`, `&quot;`, `&amp;`).
    #[default]
    AspNet4,
    /// Older ASP.NET: apostrophes left raw inside double-quoted attributes.
    Plain,
    /// Another hand: single-quoted attributes in reverse order, upper-case tag and attribute
    /// names, hexadecimal references (`&#x27;`), blanks around `=`, the CPF shown as bare digits.
    Alt,
}

/// HTML-encodes an attribute value, with `apos` for the apostrophe.
fn encode(v: &str, apos: &str) -> String {
    v.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', apos)
}

/// A tag's name as the dress writes it.
fn tag_name(d: Dress, name: &str) -> String {
    match d {
        Dress::Alt => name.to_uppercase(),
        _ => name.to_string(),
    }
}

/// `<name attr="value" ...` (not closed), as the dress writes it.
fn start(d: Dress, name: &str, attrs: &[(&str, &str)]) -> String {
    let mut attrs = attrs.to_vec();
    if d == Dress::Alt {
        attrs.reverse();
    }
    let mut out = format!("<{}", tag_name(d, name));
    for (k, v) in attrs {
        out.push_str(&match d {
            Dress::AspNet4 => format!(" {k}=\"{}\"", encode(v, "&#39;")),
            Dress::Plain => format!(
                " {k}=\"{}\"",
                v.replace('&', "&amp;").replace('"', "&quot;")
            ),
            Dress::Alt => format!(" {} = '{}'", k.to_uppercase(), encode(v, "&#x27;")),
        });
    }
    out
}

/// An element as the dress writes it; `inner` `None` makes it self-closing.
fn el(d: Dress, name: &str, attrs: &[(&str, &str)], inner: Option<&str>) -> String {
    let open = start(d, name, attrs);
    match inner {
        Some(i) => format!("{open}>{i}</{}>", tag_name(d, name)),
        None => format!("{open} />"),
    }
}

/// Text content, escaped.
fn text(v: &str) -> String {
    v.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `javascript:__doPostBack('target','')`, as a link's `href`.
fn postback_href(target: &str) -> String {
    format!("javascript:__doPostBack('{target}','')")
}

/// How a quota selection goes wrong (see [`CanopusState::misselect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misselect {
    /// The search page again with "Selecione um registro válido.", the session staying on its
    /// previous client.
    NotSelected,
    /// On to the client page, but the session stays on its previous client (a portal that lost
    /// the selection).
    PreviousClient,
}

/// One open installment of a quota.
#[derive(Debug, Clone)]
pub struct SbBoleto {
    pub due: NaiveDate,
    pub value_centavos: i64,
    pub linha: String,
    /// Serve an HTML page instead of the PDF behind the wrapper.
    pub broken_pdf: bool,
}

impl SbBoleto {
    pub fn new(due: NaiveDate, value_centavos: i64, seed: u64) -> SbBoleto {
        SbBoleto {
            due,
            value_centavos,
            linha: crate::domain::boleto::build_linha(
                "237",
                due,
                value_centavos,
                &format!("{seed:025}"),
            ),
            broken_pdf: false,
        }
    }
}

/// One consórcio quota of a client.
#[derive(Debug, Clone)]
pub struct SbQuota {
    pub group: String,
    pub quota: String,
    pub name: String,
    pub boletos: Vec<SbBoleto>,
}

#[derive(Default)]
struct Session {
    user: Option<String>,
    criterion: String,
    quota: Option<(String, usize)>,
    row: Option<usize>,
    /// Requests served since the login (against the session cap).
    requests: u64,
}

/// A printed boleto and whose it is.
#[derive(Clone)]
struct Print {
    boleto: SbBoleto,
    cpf: String,
    quota: SbQuota,
}

struct PageState {
    path: &'static str,
    session: String,
    allowed: HashSet<String>,
    validation: String,
    vsig: Option<String>,
    /// What the page showed (the CPF of a result grid), as ASP.NET keeps it in the view state.
    context: Option<String>,
}

#[derive(Default)]
struct Data {
    users: HashMap<String, String>,
    clients: HashMap<String, Vec<SbQuota>>,
    sessions: HashMap<String, Session>,
    states: HashMap<String, PageState>,
    prints: HashMap<String, Print>,
    logins: u64,
    /// Postbacks (other than the login's) to reject with the yellow screen.
    reject: u32,
    expire_after: Option<u64>,
    /// A session ends after this many requests since its login.
    session_cap: Option<u64>,
    dress: Dress,
    /// The result grid starts with a link that is not a quota.
    no_decoy: bool,
    /// Quota selections, by CPF, that go wrong the next times (how, and how many times).
    misselect: HashMap<String, (Misselect, u32)>,
    /// PDFs served, by `CPF GROUP/QUOTA`.
    downloads: HashMap<String, u32>,
    next: u64,
}

/// The state of the fake portal.
pub struct CanopusState {
    data: Mutex<Data>,
    faults: Arc<Faults>,
}

impl CanopusState {
    pub fn new(faults: Arc<Faults>) -> CanopusState {
        CanopusState {
            data: Mutex::default(),
            faults,
        }
    }

    /// Adds a portal user (the code as typed, e.g. `24627`; the portal wants it padded).
    pub fn add_user(&self, code: &str, password: &str) {
        self.data
            .lock()
            .unwrap()
            .users
            .insert(format!("{code:0>10}"), password.to_string());
    }

    /// Sets the quotas of a client (11-digit CPF); none means the CPF is not a client.
    pub fn set_client(&self, cpf: &str, quotas: Vec<SbQuota>) {
        self.data
            .lock()
            .unwrap()
            .clients
            .insert(cpf.to_string(), quotas);
    }

    /// Ends every session now: the next page answers with the login page.
    pub fn expire_sessions(&self) {
        let mut data = self.data.lock().unwrap();
        for s in data.sessions.values_mut() {
            s.user = None;
        }
    }

    /// Ends every session after `n` more page requests.
    pub fn expire_sessions_after(&self, n: u64) {
        self.data.lock().unwrap().expire_after = Some(n);
    }

    /// Rejects the next `n` postbacks of pages other than the login page, as ASP.NET does
    /// when the page changed under the client.
    pub fn reject_postbacks(&self, n: u32) {
        self.data.lock().unwrap().reject = n;
    }

    /// Successful logins so far.
    pub fn logins(&self) -> u64 {
        self.data.lock().unwrap().logins
    }

    /// Ends each session after `n` requests since its login (the real portal's cap is about 15);
    /// `None`: no cap.
    pub fn set_session_cap(&self, n: Option<u64>) {
        self.data.lock().unwrap().session_cap = n;
    }

    /// Renders the pages in another dress.
    pub fn set_dress(&self, dress: Dress) {
        self.data.lock().unwrap().dress = dress;
    }

    /// Whether the result grid starts with a link that is not a quota (it does by default).
    pub fn set_decoy_row(&self, on: bool) {
        self.data.lock().unwrap().no_decoy = !on;
    }

    /// The next `times` selections of a quota of the client `cpf` (11 digits) go wrong, `how`.
    pub fn misselect(&self, cpf: &str, how: Misselect, times: u32) {
        self.data
            .lock()
            .unwrap()
            .misselect
            .insert(cpf.to_string(), (how, times));
    }

    /// PDFs served so far for the quota `GROUP/QUOTA` of the client `cpf` (11 digits).
    pub fn downloads(&self, cpf: &str, quota: &str) -> u32 {
        let data = self.data.lock().unwrap();
        *data.downloads.get(&format!("{cpf} {quota}")).unwrap_or(&0)
    }

    /// PDFs served so far, all quotas together.
    pub fn downloads_total(&self) -> u32 {
        self.data.lock().unwrap().downloads.values().sum()
    }

    fn dress(&self) -> Dress {
        self.data.lock().unwrap().dress
    }

    fn token(data: &mut Data, prefix: &str) -> String {
        data.next += 1;
        format!("{prefix}{:016X}{:04X}", fastrand::u64(..), data.next)
    }

    /// Issues the hidden state of a page and remembers what it offers.
    fn issue(&self, sid: &str, path: &'static str, allowed: &[String], vsig: bool) -> Hidden {
        self.issue_with(sid, path, allowed, vsig, None)
    }

    fn issue_with(
        &self,
        sid: &str,
        path: &'static str,
        allowed: &[String],
        vsig: bool,
        context: Option<String>,
    ) -> Hidden {
        let mut data = self.data.lock().unwrap();
        let viewstate = Self::token(&mut data, "/wEPDwUKLTk");
        let validation = Self::token(&mut data, "/wEdAA");
        let vsig = vsig.then(|| Self::token(&mut data, "VS"));
        data.states.insert(
            viewstate.clone(),
            PageState {
                path,
                session: sid.to_string(),
                allowed: allowed.iter().cloned().collect(),
                validation: validation.clone(),
                vsig: vsig.clone(),
                context,
            },
        );
        Hidden {
            viewstate,
            validation,
            vsig,
        }
    }

    /// Counts a page request against the expiry switch.
    fn tick(&self) {
        let mut data = self.data.lock().unwrap();
        if let Some(n) = data.expire_after {
            if n == 0 {
                data.expire_after = None;
                for s in data.sessions.values_mut() {
                    s.user = None;
                }
            } else {
                data.expire_after = Some(n - 1);
            }
        }
    }
}

struct Hidden {
    viewstate: String,
    validation: String,
    vsig: Option<String>,
}

pub fn routes(state: Arc<CanopusState>) -> Router {
    Router::new()
        .route(LOGIN, get(login_get).post(login_post))
        .route(MAIN, get(main_page))
        .route(SEARCH, get(search_get).post(search_post))
        .route(CLIENT, get(client_page))
        .route(BOLETOS, get(boletos_get).post(boletos_post))
        .route(PRINT, get(print_wrapper))
        .route(FILE, get(print_file))
        .with_state(state)
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    cookies.split(';').find_map(|c| {
        c.trim()
            .strip_prefix("ASP.NET_SessionId=")
            .map(str::to_string)
    })
}

/// The session of the request, created when missing. Returns (id, is new).
fn session(s: &CanopusState, headers: &HeaderMap) -> (String, bool) {
    let mut data = s.data.lock().unwrap();
    if let Some(id) = session_id(headers)
        && data.sessions.contains_key(&id)
    {
        return (id, false);
    }
    let id = CanopusState::token(&mut data, "").to_lowercase();
    data.sessions.insert(id.clone(), Session::default());
    (id, true)
}

/// What every page does first: faults, the expiry switch, the session and the login check.
/// `Err` is the answer to give instead (a fault, or the redirect to the login page).
async fn enter(s: &CanopusState, headers: &HeaderMap, path: &str) -> Result<String, Box<Response>> {
    if let Some(r) = s.faults.before(Route::CanopusPage).await {
        return Err(Box::new(r));
    }
    s.tick();
    let (sid, _) = session(s, headers);
    if !count_request(s, &sid) {
        return Err(Box::new(to_login(path)));
    }
    Ok(sid)
}

/// Counts a request of a logged-in session against the cap; `false` when the session is not
/// (or no longer) logged in.
fn count_request(s: &CanopusState, sid: &str) -> bool {
    let mut data = s.data.lock().unwrap();
    let cap = data.session_cap;
    let Some(sess) = data.sessions.get_mut(sid) else {
        return false;
    };
    if sess.user.is_none() {
        return false;
    }
    sess.requests += 1;
    if cap.is_some_and(|c| sess.requests > c) {
        sess.user = None;
        return false;
    }
    true
}

fn with_cookie(mut resp: Response, sid: &str, new: bool) -> Response {
    if new {
        resp.headers_mut().insert(
            header::SET_COOKIE,
            format!("ASP.NET_SessionId={sid}; path=/; HttpOnly")
                .parse()
                .expect("cookie"),
        );
    }
    resp
}

fn redirect(to: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
}

fn to_login(path: &str) -> Response {
    let ret = path.trim_start_matches(PREFIX).replace('/', "%2f");
    redirect(&format!("{LOGIN}?ReturnUrl={ret}"))
}

fn page(d: Dress, title: &str, action: &str, hidden: &Hidden, body: &str) -> Response {
    let input = |name: &str, value: &str| {
        el(
            d,
            "input",
            &[
                ("type", "hidden"),
                ("name", name),
                ("id", name),
                ("value", value),
            ],
            None,
        )
    };
    let vsig = hidden
        .vsig
        .as_ref()
        .map(|v| format!("{}\n", input("__VSIG", v)))
        .unwrap_or_default();
    let form = start(
        d,
        "form",
        &[
            ("name", "aspnetForm"),
            ("method", "post"),
            ("action", action),
            ("id", "aspnetForm"),
        ],
    );
    Html(format!(
        r#"<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
<head><title>Canopus - {title}</title><link href="../../App_Themes/Padrao/estilo.css" type="text/css" rel="stylesheet" /></head>
<body>
{form}>
<div class="aspNetHidden">
{}
{}
{}
{vsig}</div>
<script type="text/javascript">
//<![CDATA[
var theForm = document.forms['aspnetForm'];
if (!theForm) {{ theForm = document.aspnetForm; }}
function __doPostBack(eventTarget, eventArgument) {{
    if (!theForm.onsubmit || (theForm.onsubmit() != false)) {{
        theForm.__EVENTTARGET.value = eventTarget;
        theForm.__EVENTARGUMENT.value = eventArgument;
        theForm.submit();
    }}
}}
//]]>
</script>
<div class="aspNetHidden">
{}
{}
</div>
<div id="cabecalho"><img src="../../img/logo.gif" alt="Consórcio Canopus" /></div>
{body}
</{}>
</body>
</html>"#,
        input("__EVENTTARGET", ""),
        input("__EVENTARGUMENT", ""),
        input("__VIEWSTATE", &hidden.viewstate),
        input("__VIEWSTATEGENERATOR", "C2EE9ABB"),
        input("__EVENTVALIDATION", &hidden.validation),
        tag_name(d, "form"),
    ))
    .into_response()
}

/// ASP.NET's yellow screen for a rejected postback.
fn invalid_postback() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Html(
            "<html><head><title>Invalid postback or callback argument</title></head><body><h1>Server Error in '/' Application.</h1><h2><i>Invalid postback or callback argument.  Event validation is enabled using &lt;pages enableEventValidation=\"true\"/&gt; in configuration or &lt;%@ Page EnableEventValidation=\"true\" %&gt; in a page.</i></h2></body></html>",
        ),
    )
        .into_response()
}

/// Checks the posted hidden state against what `path` issued to this session and returns the
/// control that was clicked (and what the page showed); `None` earns the yellow screen.
fn postback(
    s: &CanopusState,
    sid: &str,
    path: &'static str,
    form: &HashMap<String, String>,
) -> Option<(String, Option<String>)> {
    let mut data = s.data.lock().unwrap();
    if path != LOGIN && data.reject > 0 {
        data.reject -= 1;
        return None;
    }
    let state = form.get("__VIEWSTATE").and_then(|v| data.states.get(v))?;
    if state.path != path
        || state.session != sid
        || form.get("__EVENTVALIDATION") != Some(&state.validation)
        || form.get("__VIEWSTATEGENERATOR").map(String::as_str) != Some("C2EE9ABB")
        || state.vsig.is_some() && form.get("__VSIG") != state.vsig.as_ref()
    {
        return None;
    }
    // Without an event target, the click is the button posted with the form (a select's value
    // is posted too, but a select is only a target through `__doPostBack`).
    let target = form
        .get("__EVENTTARGET")
        .filter(|t| !t.is_empty())
        .cloned()
        .or_else(|| {
            state
                .allowed
                .iter()
                .filter(|a| a.as_str() != CRITERION)
                .find(|a| form.contains_key(*a) || form.contains_key(&format!("{a}.x")))
                .cloned()
        });
    match target {
        Some(t) if state.allowed.contains(&t) => Some((t, state.context.clone())),
        _ => None,
    }
}

fn login_page(s: &CanopusState, sid: &str, message: &str) -> Response {
    let d = s.dress();
    let hidden = s.issue(sid, LOGIN, &["btnLogin".to_string()], false);
    let msg = if message.is_empty() {
        String::new()
    } else {
        el(
            d,
            "span",
            &[("id", "lblMensagem"), ("class", "erro")],
            Some(&text(message)),
        )
    };
    page(
        d,
        "Login",
        "./frmCorCCCnsLogin.aspx",
        &hidden,
        &format!(
            "<div id=\"login\">\n<label for=\"edtUsuario\">Usuário</label>{}\n<label for=\"edtSenha\">Senha</label>{}\n{}\n{msg}\n</div>",
            el(
                d,
                "input",
                &[
                    ("name", "edtUsuario"),
                    ("type", "text"),
                    ("maxlength", "10"),
                    ("id", "edtUsuario"),
                ],
                None
            ),
            el(
                d,
                "input",
                &[
                    ("name", "edtSenha"),
                    ("type", "password"),
                    ("id", "edtSenha")
                ],
                None
            ),
            el(
                d,
                "input",
                &[
                    ("type", "submit"),
                    ("name", "btnLogin"),
                    ("value", "Entrar"),
                    ("id", "btnLogin"),
                ],
                None
            ),
        ),
    )
}

async fn login_get(State(s): State<Arc<CanopusState>>, headers: HeaderMap) -> Response {
    if let Some(r) = s.faults.before(Route::CanopusLogin).await {
        return r;
    }
    let (sid, new) = session(&s, &headers);
    with_cookie(login_page(&s, &sid, ""), &sid, new)
}

async fn login_post(
    State(s): State<Arc<CanopusState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(r) = s.faults.before(Route::CanopusLogin).await {
        return r;
    }
    let (sid, new) = session(&s, &headers);
    if postback(&s, &sid, LOGIN, &form).is_none() {
        return invalid_postback();
    }
    let user = form.get("edtUsuario").cloned().unwrap_or_default();
    let pass = form.get("edtSenha").cloned().unwrap_or_default();
    let ok = {
        let mut data = s.data.lock().unwrap();
        let ok = user.len() == 10 && data.users.get(&user) == Some(&pass);
        if ok {
            data.logins += 1;
            if let Some(sess) = data.sessions.get_mut(&sid) {
                *sess = Session {
                    user: Some(user),
                    ..Session::default()
                };
            }
        }
        ok
    };
    let resp = if ok {
        redirect(MAIN)
    } else {
        login_page(&s, &sid, "Usuário ou senha inválidos.")
    };
    with_cookie(resp, &sid, new)
}

async fn main_page(State(s): State<Arc<CanopusState>>, headers: HeaderMap) -> Response {
    let sid = match enter(&s, &headers, MAIN).await {
        Ok(sid) => sid,
        Err(r) => return *r,
    };
    let hidden = s.issue(&sid, MAIN, &[], false);
    page(
        s.dress(),
        "Principal",
        "./frmMain.aspx",
        &hidden,
        r#"<ul id="menu"><li><a href="CONAT/frmBuscaCota.aspx">Atendimento</a></li></ul>"#,
    )
}

/// What the search page shows under the search box.
enum Results<'a> {
    Nothing,
    Message(&'a str),
    /// The grid of a CPF's quotas (with a message above it, e.g. "Selecione um registro
    /// válido.").
    Grid {
        cpf: String,
        message: Option<&'a str>,
    },
}

/// The grid row of a control's UniqueID (`...$grdX$ctlNN$control`: row `NN - 2`, as ASP.NET
/// numbers rows after the header's `ctl01`).
fn grid_row(unique_id: &str) -> Option<usize> {
    unique_id
        .rsplit('$')
        .nth(1)?
        .strip_prefix("ctl")?
        .parse::<usize>()
        .ok()?
        .checked_sub(2)
}

/// The UniqueID of row `i` (0 = the first data row) of the result grid.
fn quota_target(i: usize) -> String {
    format!(
        "ctl00$Conteudo$grdBuscaAvancada$ctl{:02}$lnkGrupoCota",
        i + 2
    )
}

fn message_span(d: Dress, m: &str) -> String {
    el(
        d,
        "span",
        &[("id", "ctl00_Conteudo_lblMensagem")],
        Some(&text(m)),
    )
}

fn search_page(s: &CanopusState, sid: &str, results: Results) -> Response {
    let d = s.dress();
    let (criterion, decoy) = {
        let data = s.data.lock().unwrap();
        let c = data
            .sessions
            .get(sid)
            .map(|x| x.criterion.clone())
            .unwrap_or_default();
        (c, !data.no_decoy)
    };
    let mut allowed = vec![CRITERION.to_string(), SEARCH_BUTTON.to_string()];
    let (below, context) = match results {
        Results::Nothing => (String::new(), None),
        Results::Message(m) => (message_span(d, m), None),
        Results::Grid { cpf, message } => {
            let quotas = quotas_of(s, &cpf);
            let typed = formatted(&cpf);
            let mut rows = String::new();
            // The real grid may start with a link that is not a quota (empty text).
            let first = usize::from(decoy);
            if decoy {
                allowed.push(quota_target(0));
                let link = el(
                    d,
                    "a",
                    &[
                        ("id", "ctl00_Conteudo_grdBuscaAvancada_ctl02_lnkGrupoCota"),
                        ("href", &postback_href(&quota_target(0))),
                    ],
                    Some(""),
                );
                rows.push_str(&format!(
                    "<tr class=\"grid-pager\"><td>{link}</td><td>&nbsp;</td><td>&nbsp;</td></tr>\n"
                ));
            }
            for (i, q) in quotas.iter().enumerate() {
                let target = quota_target(first + i);
                allowed.push(target.clone());
                let id = format!(
                    "ctl00_Conteudo_grdBuscaAvancada_ctl{:02}_lnkGrupoCota",
                    first + i + 2
                );
                let link = el(
                    d,
                    "a",
                    &[("id", &id), ("href", &postback_href(&target))],
                    Some(&format!("{}/{}", q.group, q.quota)),
                );
                rows.push_str(&format!(
                    "<tr><td>{link}</td><td>{}</td><td>{}</td></tr>\n",
                    text(&q.name),
                    text(&typed)
                ));
            }
            let table = el(
                d,
                "table",
                &[
                    ("class", "grid"),
                    ("cellspacing", "0"),
                    ("rules", "all"),
                    ("border", "1"),
                    ("id", "ctl00_Conteudo_grdBuscaAvancada"),
                ],
                Some(&format!(
                    "\n<tr><th>Grupo/Cota</th><th>Nome</th><th>CPF</th></tr>\n{rows}"
                )),
            );
            let above = message.map(|m| message_span(d, m)).unwrap_or_default();
            (format!("{above}\n{table}"), Some(cpf))
        }
    };
    let hidden = s.issue_with(sid, SEARCH, &allowed, false, context);
    let options: String = [
        ("G", "Grupo/Cota"),
        ("F", "CPF"),
        ("N", "Nome"),
        ("C", "Contrato"),
    ]
    .iter()
    .map(|(v, label)| {
        let mut attrs = vec![("value", *v)];
        if criterion == *v {
            attrs.insert(0, ("selected", "selected"));
        }
        el(d, "option", &attrs, Some(label))
    })
    .collect();
    let onchange = format!("javascript:setTimeout('__doPostBack(\\'{CRITERION}\\',\\'\\')', 0)");
    let select = el(
        d,
        "select",
        &[
            ("name", CRITERION),
            ("onchange", &onchange),
            ("id", "ctl00_Conteudo_cbxCriterioBusca"),
        ],
        Some(&format!("\n{options}\n")),
    );
    // The search box opens only once the criterion's auto-postback has run.
    let mut box_attrs = vec![
        ("name", SEARCH_TEXT),
        ("type", "text"),
        ("id", "ctl00_Conteudo_edtContextoBusca"),
    ];
    if criterion != "F" {
        box_attrs.push(("disabled", "disabled"));
    }
    let onclick = format!(
        "javascript:WebForm_DoPostBackWithOptions(new WebForm_PostBackOptions(\"{SEARCH_BUTTON}\", \"\", true, \"\", \"\", false, false))"
    );
    let button = el(
        d,
        "input",
        &[
            ("type", "submit"),
            ("name", SEARCH_BUTTON),
            ("value", "Buscar"),
            ("onclick", &onclick),
            ("id", "ctl00_Conteudo_btnBuscar"),
        ],
        None,
    );
    page(
        d,
        "Busca de cotas",
        "./frmBuscaCota.aspx",
        &hidden,
        &format!(
            "<div id=\"ctl00_Conteudo_pnlBusca\">\n{select}\n{}\n{button}\n</div>\n{below}",
            el(d, "input", &box_attrs, None),
        ),
    )
}

async fn search_get(State(s): State<Arc<CanopusState>>, headers: HeaderMap) -> Response {
    let sid = match enter(&s, &headers, SEARCH).await {
        Ok(sid) => sid,
        Err(r) => return *r,
    };
    if let Some(sess) = s.data.lock().unwrap().sessions.get_mut(&sid) {
        sess.criterion = "G".into();
    }
    search_page(&s, &sid, Results::Nothing)
}

async fn search_post(
    State(s): State<Arc<CanopusState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let sid = match enter(&s, &headers, SEARCH).await {
        Ok(sid) => sid,
        Err(r) => return *r,
    };
    let Some((target, shown_cpf)) = postback(&s, &sid, SEARCH, &form) else {
        return invalid_postback();
    };
    if target == CRITERION {
        let value = form.get(CRITERION).cloned().unwrap_or_default();
        if let Some(sess) = s.data.lock().unwrap().sessions.get_mut(&sid) {
            sess.criterion = value;
        }
        return search_page(&s, &sid, Results::Nothing);
    }
    if target == SEARCH_BUTTON {
        let criterion = form.get(CRITERION).cloned().unwrap_or_default();
        let Some(typed) = form.get(SEARCH_TEXT).cloned() else {
            return search_page(&s, &sid, Results::Message("Informe o critério de busca."));
        };
        if criterion != "F" {
            // Searching a CPF under another criterion finds nothing, as on the real site.
            return search_page(&s, &sid, Results::Message("Nenhum registro encontrado."));
        }
        let formatted = typed.len() == 14
            && typed.as_bytes()[3] == b'.'
            && typed.as_bytes()[7] == b'.'
            && typed.as_bytes()[11] == b'-';
        if !formatted {
            return search_page(&s, &sid, Results::Message("CPF inválido."));
        }
        let cpf: String = typed.chars().filter(char::is_ascii_digit).collect();
        if quotas_of(&s, &cpf).is_empty() {
            return search_page(&s, &sid, Results::Message("Nenhum registro encontrado."));
        }
        return search_page(&s, &sid, Results::Grid { cpf, message: None });
    }
    // A quota link: `ctl00$Conteudo$grdBuscaAvancada$ctlNN$lnkGrupoCota`.
    let Some(cpf) = shown_cpf else {
        return invalid_postback();
    };
    let decoy = !s.data.lock().unwrap().no_decoy;
    let row = grid_row(&target).and_then(|n| n.checked_sub(usize::from(decoy)));
    let not_selected = {
        let mut data = s.data.lock().unwrap();
        let wrong = match data.misselect.get_mut(&cpf) {
            Some((how, n)) if *n > 0 => {
                *n -= 1;
                Some(*how)
            }
            _ => None,
        };
        if row.is_none() || wrong == Some(Misselect::NotSelected) {
            true
        } else if wrong == Some(Misselect::PreviousClient) {
            return redirect(CLIENT);
        } else {
            if let (Some(i), Some(sess)) = (row, data.sessions.get_mut(&sid)) {
                sess.quota = Some((cpf.clone(), i));
                sess.row = None;
            }
            false
        }
    };
    if not_selected {
        // Not a quota: the search page again, the session still on its previous client.
        let message = Some("Selecione um registro válido.");
        return search_page(&s, &sid, Results::Grid { cpf, message });
    }
    redirect(CLIENT)
}

/// The quotas of a client (11-digit CPF); none when the CPF is not a client.
fn quotas_of(s: &CanopusState, cpf: &str) -> Vec<SbQuota> {
    s.data
        .lock()
        .unwrap()
        .clients
        .get(cpf)
        .cloned()
        .unwrap_or_default()
}

/// `000.000.000-00`.
fn formatted(cpf: &str) -> String {
    format!(
        "{}.{}.{}-{}",
        &cpf[0..3],
        &cpf[3..6],
        &cpf[6..9],
        &cpf[9..11]
    )
}

/// The session's current quota, with its client's CPF.
fn current_quota(s: &CanopusState, sid: &str) -> Option<(String, SbQuota)> {
    let data = s.data.lock().unwrap();
    let (cpf, i) = data.sessions.get(sid)?.quota.clone()?;
    let q = data.clients.get(&cpf)?.get(i).cloned()?;
    Some((cpf, q))
}

async fn client_page(State(s): State<Arc<CanopusState>>, headers: HeaderMap) -> Response {
    let sid = match enter(&s, &headers, CLIENT).await {
        Ok(sid) => sid,
        Err(r) => return *r,
    };
    let Some((cpf, q)) = current_quota(&s, &sid) else {
        return redirect(SEARCH);
    };
    let d = s.dress();
    let shown = if d == Dress::Alt {
        cpf.clone()
    } else {
        formatted(&cpf)
    };
    let hidden = s.issue(&sid, CLIENT, &[], false);
    page(
        d,
        "Atendimento",
        "./frmConAtCnsAtendimento.aspx",
        &hidden,
        &format!(
            "<div id=\"ctl00_Conteudo_pnlCota\">{} {} <span>CPF/CNPJ:</span> {}\n{}</div>",
            el(
                d,
                "span",
                &[("id", "ctl00_Conteudo_lblNome")],
                Some(&text(&q.name))
            ),
            el(
                d,
                "span",
                &[("id", "ctl00_Conteudo_lblGrupoCota")],
                Some(&format!("{}/{}", q.group, q.quota))
            ),
            el(
                d,
                "span",
                &[("id", "ctl00_Conteudo_lblCpfCnpj")],
                Some(&shown)
            ),
            el(
                d,
                "a",
                &[
                    ("id", "ctl00_Conteudo_lnkBoletoAvulso"),
                    ("href", "../CONCO/frmConCoRelBoletoAvulso.aspx")
                ],
                Some("Emissão de boleto avulso")
            ),
        ),
    )
}

fn money(centavos: i64) -> String {
    crate::domain::money::format_brl(centavos)
}

fn boletos_page(s: &CanopusState, sid: &str, q: &SbQuota, extra: &str) -> Response {
    let d = s.dress();
    let selected = s.data.lock().unwrap().sessions.get(sid).and_then(|x| x.row);
    let mut allowed = Vec::new();
    let mut rows = String::new();
    for (i, b) in q.boletos.iter().enumerate() {
        let ctl = format!("ctl{:02}", i + 2);
        let name = format!("ctl00$Conteudo$grdBoleto_Avulso${ctl}$imgEmite_Boleto");
        let id = format!("ctl00_Conteudo_grdBoleto_Avulso_{ctl}_imgEmite_Boleto");
        allowed.push(name.clone());
        let image = el(
            d,
            "input",
            &[
                ("type", "image"),
                ("name", &name),
                ("id", &id),
                ("src", "../../img/imprimir.gif"),
                ("alt", "Emitir"),
            ],
            None,
        );
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{image}</td></tr>\n",
            b.due.format("%d/%m/%Y"),
            money(b.value_centavos),
            b.linha
        ));
    }
    let grid = if q.boletos.is_empty() {
        message_span(d, "Não existem parcelas em aberto para emissão.")
    } else {
        el(
            d,
            "table",
            &[
                ("class", "grid"),
                ("cellspacing", "0"),
                ("rules", "all"),
                ("border", "1"),
                ("id", "ctl00_Conteudo_grdBoleto_Avulso"),
            ],
            Some(&format!(
                "\n<tr><th>Vencimento</th><th>Valor</th><th>Linha digitável</th><th></th></tr>\n{rows}"
            )),
        )
    };
    let panel = if selected.is_some() {
        allowed.push(EMIT_BUTTON.to_string());
        let radio = |n: &str, v: &str, checked: bool| {
            let id = format!("ctl00_Conteudo_rdlTipoEmissao_{n}");
            let mut attrs = vec![
                ("id", id.as_str()),
                ("type", "radio"),
                ("name", EMIT_KIND),
                ("value", v),
            ];
            if checked {
                attrs.push(("checked", "checked"));
            }
            el(d, "input", &attrs, None)
        };
        let onclick = format!(
            "javascript:WebForm_DoPostBackWithOptions(new WebForm_PostBackOptions(\"{EMIT_BUTTON}\", \"\", true, \"\", \"\", false, false))"
        );
        format!(
            "<div id=\"ctl00_Conteudo_pnlEmissao\">\n{}\n<table id=\"ctl00_Conteudo_rdlTipoEmissao\"><tr><td>{}<label>Boleto avulso</label></td><td>{}<label>Carnê</label></td></tr></table>\n{}\n</div>",
            el(
                d,
                "input",
                &[
                    ("name", EMIT_DATE),
                    ("type", "text"),
                    ("id", "ctl00_Conteudo_edtDT_Compensacao")
                ],
                None
            ),
            radio("0", "BA", false),
            radio("1", "CA", true),
            el(
                d,
                "input",
                &[
                    ("type", "submit"),
                    ("name", EMIT_BUTTON),
                    ("value", "Emitir"),
                    ("onclick", &onclick),
                    ("id", "ctl00_Conteudo_btnEmitir"),
                ],
                None
            ),
        )
    } else {
        String::new()
    };
    let hidden = s.issue(sid, BOLETOS, &allowed, true);
    page(
        d,
        "Boleto avulso",
        "./frmConCoRelBoletoAvulso.aspx",
        &hidden,
        &format!(
            "<div id=\"ctl00_Conteudo_pnlBoletos\"><span id=\"ctl00_Conteudo_lblCota\">{}/{} {}</span>\n{grid}\n{panel}\n{extra}</div>",
            q.group,
            q.quota,
            text(&q.name)
        ),
    )
}

async fn boletos_get(State(s): State<Arc<CanopusState>>, headers: HeaderMap) -> Response {
    let sid = match enter(&s, &headers, BOLETOS).await {
        Ok(sid) => sid,
        Err(r) => return *r,
    };
    let Some((_, q)) = current_quota(&s, &sid) else {
        return redirect(SEARCH);
    };
    if let Some(sess) = s.data.lock().unwrap().sessions.get_mut(&sid) {
        sess.row = None;
    }
    boletos_page(&s, &sid, &q, "")
}

async fn boletos_post(
    State(s): State<Arc<CanopusState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let sid = match enter(&s, &headers, BOLETOS).await {
        Ok(sid) => sid,
        Err(r) => return *r,
    };
    let Some((cpf, q)) = current_quota(&s, &sid) else {
        return redirect(SEARCH);
    };
    let Some((target, _)) = postback(&s, &sid, BOLETOS, &form) else {
        return invalid_postback();
    };
    if target == EMIT_BUTTON {
        let row = s
            .data
            .lock()
            .unwrap()
            .sessions
            .get(&sid)
            .and_then(|x| x.row);
        let date_ok = form
            .get(EMIT_DATE)
            .is_some_and(|d| NaiveDate::parse_from_str(d, "%d/%m/%Y").is_ok());
        if !date_ok || form.get(EMIT_KIND).map(String::as_str) != Some("BA") {
            let d = s.dress();
            return boletos_page(
                &s,
                &sid,
                &q,
                &el(
                    d,
                    "span",
                    &[("id", "ctl00_Conteudo_lblErro"), ("class", "erro")],
                    Some("Informe a data de compensação e o tipo de emissão."),
                ),
            );
        }
        let Some(b) = row.and_then(|r| q.boletos.get(r)).cloned() else {
            return invalid_postback();
        };
        let token = {
            let mut data = s.data.lock().unwrap();
            let t = CanopusState::token(&mut data, "P");
            data.prints.insert(
                t.clone(),
                Print {
                    boleto: b,
                    cpf,
                    quota: q.clone(),
                },
            );
            t
        };
        // Scripts are not encoded: the URL is written as is.
        let script = format!(
            "<script type=\"text/javascript\">window.open(\"../CONCM/frmConCmImpressao.aspx?id={token}&tipo=BA\", \"Impressao\", \"width=800,height=600\");</script>"
        );
        return boletos_page(&s, &sid, &q, &script);
    }
    let index = grid_row(&target);
    if let Some(sess) = s.data.lock().unwrap().sessions.get_mut(&sid) {
        sess.row = index;
    }
    boletos_page(&s, &sid, &q, "")
}

#[derive(serde::Deserialize)]
struct PrintQuery {
    id: String,
}

async fn print_wrapper(
    State(s): State<Arc<CanopusState>>,
    headers: HeaderMap,
    Query(q): Query<PrintQuery>,
) -> Response {
    if let Some(r) = s.faults.before(Route::CanopusPage).await {
        return r;
    }
    let (sid, _) = session(&s, &headers);
    if !count_request(&s, &sid) {
        return to_login(PRINT);
    }
    if !s.data.lock().unwrap().prints.contains_key(&q.id) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let embed = el(
        s.dress(),
        "embed",
        &[
            ("width", "100%"),
            ("height", "100%"),
            ("src", &format!("Boleto.ashx?id={}&tipo=BA", q.id)),
            ("type", "application/pdf"),
        ],
        None,
    );
    // Labelled a PDF, but an HTML page around the real one: trust the bytes.
    (
        [(header::CONTENT_TYPE, "application/pdf")],
        format!(
            "<html><head><title>Impressão</title></head><body style=\"margin:0\">{embed}</body></html>"
        ),
    )
        .into_response()
}

async fn print_file(
    State(s): State<Arc<CanopusState>>,
    headers: HeaderMap,
    Query(q): Query<PrintQuery>,
) -> Response {
    if let Some(r) = s.faults.before(Route::CanopusPdf).await {
        return r;
    }
    let (sid, _) = session(&s, &headers);
    if !count_request(&s, &sid) {
        return to_login(FILE);
    }
    let Some(p) = s.data.lock().unwrap().prints.get(&q.id).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if p.boleto.broken_pdf {
        return (
            [(header::CONTENT_TYPE, "application/pdf")],
            "<html><body>Erro ao gerar o boleto</body></html>",
        )
            .into_response();
    }
    let quota = format!("{}/{}", p.quota.group, p.quota.quota);
    *s.data
        .lock()
        .unwrap()
        .downloads
        .entry(format!("{} {quota}", p.cpf))
        .or_default() += 1;
    // The PDF names whose boleto it is, so that a test can check a file's owner by content.
    let label = format!(
        "Boleto {} CPF {} cota {} vencimento {} {}",
        p.quota.name,
        p.cpf,
        quota.replace('/', "-"),
        p.boleto.due.format("%Y-%m-%d"),
        p.boleto.linha
    );
    (
        [(header::CONTENT_TYPE, "application/pdf")],
        super::pdf(&label, 170 * 1024),
    )
        .into_response()
}
