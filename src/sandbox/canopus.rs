//! The sandbox's Canopus portal (SERVICES.md §2), a faithful ASP.NET WebForms imitation: every
//! page carries hidden state that must be posted back from the page being answered, event
//! validation rejects postbacks the page did not offer, the search criterion is an
//! auto-postback, quota links are `__doPostBack` UniqueIDs, the emit button is an image button,
//! user codes are zero-padded, sessions expire to the login page, and the printed boleto is an
//! HTML wrapper labelled `application/pdf` in front of the real PDF.

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
    prints: HashMap<String, SbBoleto>,
    logins: u64,
    /// Postbacks (other than the login's) to reject with the yellow screen.
    reject: u32,
    expire_after: Option<u64>,
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
    if !logged_in(s, &sid) {
        return Err(Box::new(to_login(path)));
    }
    Ok(sid)
}

fn logged_in(s: &CanopusState, sid: &str) -> bool {
    s.data
        .lock()
        .unwrap()
        .sessions
        .get(sid)
        .is_some_and(|x| x.user.is_some())
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

fn page(title: &str, action: &str, hidden: &Hidden, body: &str) -> Response {
    let vsig = hidden
        .vsig
        .as_ref()
        .map(|v| format!("<input type=\"hidden\" name=\"__VSIG\" id=\"__VSIG\" value=\"{v}\" />\n"))
        .unwrap_or_default();
    Html(format!(
        r#"<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
<head><title>Canopus - {title}</title><link href="../../App_Themes/Padrao/estilo.css" type="text/css" rel="stylesheet" /></head>
<body>
<form name="aspnetForm" method="post" action="{action}" id="aspnetForm">
<div class="aspNetHidden">
<input type="hidden" name="__EVENTTARGET" id="__EVENTTARGET" value="" />
<input type="hidden" name="__EVENTARGUMENT" id="__EVENTARGUMENT" value="" />
<input type="hidden" name="__VIEWSTATE" id="__VIEWSTATE" value="{vs}" />
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
<input type="hidden" name="__VIEWSTATEGENERATOR" id="__VIEWSTATEGENERATOR" value="C2EE9ABB" />
<input type="hidden" name="__EVENTVALIDATION" id="__EVENTVALIDATION" value="{ev}" />
</div>
<div id="cabecalho"><img src="../../img/logo.gif" alt="Consórcio Canopus" /></div>
{body}
</form>
</body>
</html>"#,
        vs = hidden.viewstate,
        ev = hidden.validation,
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
    let hidden = s.issue(sid, LOGIN, &["btnLogin".to_string()], false);
    let msg = if message.is_empty() {
        String::new()
    } else {
        format!("<span id=\"lblMensagem\" class=\"erro\">{message}</span>")
    };
    page(
        "Login",
        "./frmCorCCCnsLogin.aspx",
        &hidden,
        &format!(
            r#"<div id="login">
<label for="edtUsuario">Usuário</label><input name="edtUsuario" type="text" maxlength="10" id="edtUsuario" />
<label for="edtSenha">Senha</label><input name="edtSenha" type="password" id="edtSenha" />
<input type="submit" name="btnLogin" value="Entrar" id="btnLogin" />
{msg}
</div>"#
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
        "Principal",
        "./frmMain.aspx",
        &hidden,
        r#"<ul id="menu"><li><a href="CONAT/frmBuscaCota.aspx">Atendimento</a></li></ul>"#,
    )
}

fn search_page(s: &CanopusState, sid: &str, results: &str, cpf: Option<String>) -> Response {
    let criterion = {
        let data = s.data.lock().unwrap();
        data.sessions
            .get(sid)
            .map(|x| x.criterion.clone())
            .unwrap_or_default()
    };
    let mut allowed = vec![CRITERION.to_string(), SEARCH_BUTTON.to_string()];
    let links: Vec<String> = results
        .match_indices("__doPostBack('")
        .filter_map(|(i, _)| results[i + 14..].split('\'').next().map(str::to_string))
        .collect();
    allowed.extend(links);
    let hidden = s.issue_with(sid, SEARCH, &allowed, false, cpf);
    let option = |v: &str, label: &str| {
        let sel = if criterion == v {
            " selected=\"selected\""
        } else {
            ""
        };
        format!("<option{sel} value=\"{v}\">{label}</option>")
    };
    page(
        "Busca de cotas",
        "./frmBuscaCota.aspx",
        &hidden,
        &format!(
            r#"<div id="ctl00_Conteudo_pnlBusca">
<select name="{CRITERION}" onchange="javascript:setTimeout('__doPostBack(\'{CRITERION}\',\'\')', 0)" id="ctl00_Conteudo_cbxCriterioBusca">
{}{}{}{}
</select>
<input name="{SEARCH_TEXT}" type="text" id="ctl00_Conteudo_edtContextoBusca"{disabled} />
<input type="submit" name="{SEARCH_BUTTON}" value="Buscar" id="ctl00_Conteudo_btnBuscar" />
</div>
{results}"#,
            option("G", "Grupo/Cota"),
            option("F", "CPF"),
            option("N", "Nome"),
            option("C", "Contrato"),
            // The search box opens only once the criterion's auto-postback has run.
            disabled = if criterion == "F" {
                ""
            } else {
                " disabled=\"disabled\""
            },
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
    search_page(&s, &sid, "", None)
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
        return search_page(&s, &sid, "", None);
    }
    if target == SEARCH_BUTTON {
        let criterion = form.get(CRITERION).cloned().unwrap_or_default();
        let Some(text) = form.get(SEARCH_TEXT).cloned() else {
            return search_page(
                &s,
                &sid,
                "<span id=\"ctl00_Conteudo_lblMensagem\">Informe o critério de busca.</span>",
                None,
            );
        };
        if criterion != "F" {
            // Searching a CPF under another criterion finds nothing, as on the real site.
            return search_page(
                &s,
                &sid,
                "<span id=\"ctl00_Conteudo_lblMensagem\">Nenhum registro encontrado.</span>",
                None,
            );
        }
        let formatted = text.len() == 14
            && text.as_bytes()[3] == b'.'
            && text.as_bytes()[7] == b'.'
            && text.as_bytes()[11] == b'-';
        if !formatted {
            return search_page(
                &s,
                &sid,
                "<span id=\"ctl00_Conteudo_lblMensagem\">CPF inválido.</span>",
                None,
            );
        }
        let cpf: String = text.chars().filter(char::is_ascii_digit).collect();
        let quotas = s
            .data
            .lock()
            .unwrap()
            .clients
            .get(&cpf)
            .cloned()
            .unwrap_or_default();
        if quotas.is_empty() {
            return search_page(
                &s,
                &sid,
                "<span id=\"ctl00_Conteudo_lblMensagem\">Nenhum registro encontrado.</span>",
                None,
            );
        }
        let mut rows = String::new();
        for (i, q) in quotas.iter().enumerate() {
            let ctl = format!("ctl{:02}", i + 2);
            rows.push_str(&format!(
                "<tr><td><a id=\"ctl00_Conteudo_grdBuscaAvancada_{ctl}_lnkGrupoCota\" href=\"javascript:__doPostBack('ctl00$Conteudo$grdBuscaAvancada${ctl}$lnkGrupoCota','')\">{}/{}</a></td><td>{}</td><td>{}</td></tr>\n",
                q.group, q.quota, q.name, text
            ));
        }
        let table = format!(
            "<table class=\"grid\" cellspacing=\"0\" rules=\"all\" border=\"1\" id=\"ctl00_Conteudo_grdBuscaAvancada\">\n<tr><th>Grupo/Cota</th><th>Nome</th><th>CPF</th></tr>\n{rows}</table>"
        );
        return search_page(&s, &sid, &table, Some(cpf));
    }
    // A quota link: `ctl00$Conteudo$grdBuscaAvancada$ctlNN$lnkGrupoCota`.
    let index = target
        .split('$')
        .find_map(|p| p.strip_prefix("ctl").and_then(|n| n.parse::<usize>().ok()))
        .map(|n| n.saturating_sub(2));
    {
        let mut data = s.data.lock().unwrap();
        if let (Some(i), Some(cpf), Some(sess)) = (index, shown_cpf, data.sessions.get_mut(&sid)) {
            sess.quota = Some((cpf, i));
            sess.row = None;
        }
    }
    redirect(CLIENT)
}

fn current_quota(s: &CanopusState, sid: &str) -> Option<SbQuota> {
    let data = s.data.lock().unwrap();
    let (cpf, i) = data.sessions.get(sid)?.quota.clone()?;
    data.clients.get(&cpf)?.get(i).cloned()
}

async fn client_page(State(s): State<Arc<CanopusState>>, headers: HeaderMap) -> Response {
    let sid = match enter(&s, &headers, CLIENT).await {
        Ok(sid) => sid,
        Err(r) => return *r,
    };
    let Some(q) = current_quota(&s, &sid) else {
        return redirect(SEARCH);
    };
    let hidden = s.issue(&sid, CLIENT, &[], false);
    page(
        "Atendimento",
        "./frmConAtCnsAtendimento.aspx",
        &hidden,
        &format!(
            r#"<div id="ctl00_Conteudo_pnlCota"><span id="ctl00_Conteudo_lblNome">{}</span> <span id="ctl00_Conteudo_lblGrupoCota">{}/{}</span>
<a id="ctl00_Conteudo_lnkBoletoAvulso" href="../CONCO/frmConCoRelBoletoAvulso.aspx">Emissão de boleto avulso</a></div>"#,
            q.name, q.group, q.quota
        ),
    )
}

fn money(centavos: i64) -> String {
    crate::domain::money::format_brl(centavos)
}

fn boletos_page(s: &CanopusState, sid: &str, q: &SbQuota, extra: &str) -> Response {
    let selected = s.data.lock().unwrap().sessions.get(sid).and_then(|x| x.row);
    let mut allowed = Vec::new();
    let mut rows = String::new();
    for (i, b) in q.boletos.iter().enumerate() {
        let ctl = format!("ctl{:02}", i + 2);
        let name = format!("ctl00$Conteudo$grdBoleto_Avulso${ctl}$imgEmite_Boleto");
        allowed.push(name.clone());
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><input type=\"image\" name=\"{name}\" id=\"ctl00_Conteudo_grdBoleto_Avulso_{ctl}_imgEmite_Boleto\" src=\"../../img/imprimir.gif\" alt=\"Emitir\" /></td></tr>\n",
            b.due.format("%d/%m/%Y"),
            money(b.value_centavos),
            b.linha
        ));
    }
    let grid = if q.boletos.is_empty() {
        "<span id=\"ctl00_Conteudo_lblMensagem\">Não existem parcelas em aberto para emissão.</span>".to_string()
    } else {
        format!(
            "<table class=\"grid\" cellspacing=\"0\" rules=\"all\" border=\"1\" id=\"ctl00_Conteudo_grdBoleto_Avulso\">\n<tr><th>Vencimento</th><th>Valor</th><th>Linha digitável</th><th></th></tr>\n{rows}</table>"
        )
    };
    let panel = if selected.is_some() {
        allowed.push(EMIT_BUTTON.to_string());
        format!(
            r#"<div id="ctl00_Conteudo_pnlEmissao">
<input name="{EMIT_DATE}" type="text" id="ctl00_Conteudo_edtDT_Compensacao" />
<table id="ctl00_Conteudo_rdlTipoEmissao"><tr><td><input id="ctl00_Conteudo_rdlTipoEmissao_0" type="radio" name="{EMIT_KIND}" value="BA" /><label>Boleto avulso</label></td><td><input id="ctl00_Conteudo_rdlTipoEmissao_1" type="radio" name="{EMIT_KIND}" value="CA" checked="checked" /><label>Carnê</label></td></tr></table>
<input type="submit" name="{EMIT_BUTTON}" value="Emitir" id="ctl00_Conteudo_btnEmitir" />
</div>"#
        )
    } else {
        String::new()
    };
    let hidden = s.issue(sid, BOLETOS, &allowed, true);
    page(
        "Boleto avulso",
        "./frmConCoRelBoletoAvulso.aspx",
        &hidden,
        &format!(
            "<div id=\"ctl00_Conteudo_pnlBoletos\"><span id=\"ctl00_Conteudo_lblCota\">{}/{} {}</span>\n{grid}\n{panel}\n{extra}</div>",
            q.group, q.quota, q.name
        ),
    )
}

async fn boletos_get(State(s): State<Arc<CanopusState>>, headers: HeaderMap) -> Response {
    let sid = match enter(&s, &headers, BOLETOS).await {
        Ok(sid) => sid,
        Err(r) => return *r,
    };
    let Some(q) = current_quota(&s, &sid) else {
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
    let Some(q) = current_quota(&s, &sid) else {
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
            return boletos_page(
                &s,
                &sid,
                &q,
                "<span id=\"ctl00_Conteudo_lblErro\" class=\"erro\">Informe a data de compensação e o tipo de emissão.</span>",
            );
        }
        let Some(b) = row.and_then(|r| q.boletos.get(r)).cloned() else {
            return invalid_postback();
        };
        let token = {
            let mut data = s.data.lock().unwrap();
            let t = CanopusState::token(&mut data, "P");
            data.prints.insert(t.clone(), b);
            t
        };
        let script = format!(
            "<script type=\"text/javascript\">window.open(\"../CONCM/frmConCmImpressao.aspx?id={token}&tipo=BA\", \"Impressao\", \"width=800,height=600\");</script>"
        );
        return boletos_page(&s, &sid, &q, &script);
    }
    let index = target
        .split('$')
        .find_map(|p| p.strip_prefix("ctl").and_then(|n| n.parse::<usize>().ok()))
        .map(|n| n.saturating_sub(2));
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
    if !logged_in(&s, &sid) {
        return to_login(PRINT);
    }
    if !s.data.lock().unwrap().prints.contains_key(&q.id) {
        return StatusCode::NOT_FOUND.into_response();
    }
    // Labelled a PDF, but an HTML page around the real one: trust the bytes.
    (
        [(header::CONTENT_TYPE, "application/pdf")],
        format!(
            "<html><head><title>Impressão</title></head><body style=\"margin:0\"><embed width=\"100%\" height=\"100%\" src=\"Boleto.ashx?id={}\" type=\"application/pdf\" /></body></html>",
            q.id
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
    if !logged_in(&s, &sid) {
        return to_login(FILE);
    }
    let Some(b) = s.data.lock().unwrap().prints.get(&q.id).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if b.broken_pdf {
        return (
            [(header::CONTENT_TYPE, "application/pdf")],
            "<html><body>Erro ao gerar o boleto</body></html>",
        )
            .into_response();
    }
    let label = format!("Boleto {} {}", b.due.format("%Y-%m-%d"), b.linha);
    (
        [(header::CONTENT_TYPE, "application/pdf")],
        super::pdf(&label, 170 * 1024),
    )
        .into_response()
}
