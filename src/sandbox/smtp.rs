//! The sandbox's fake SMTP server: a real RFC 5321 conversation on 127.0.0.1 (EHLO, STARTTLS or
//! implicit TLS with a fresh certificate made either way real servers present one, AUTH
//! PLAIN/LOGIN, pipelining, 8BITMIME, SMTPUTF8), the messages it stored, and the faults that make
//! the next transactions fail the ways real servers fail: refused connections, 4xx/5xx answers,
//! the ambiguous drop after the data's final dot, and latency on every reply.
//!
//! Replies are written as a pipelining server writes them (RFC 2920): held while more commands
//! the client sent are waiting to be read, then flushed together, `set_reply_latency` after the
//! last of them. A client waiting for each reply pays the latency per command; one that
//! pipelines pays it per group.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

pub use super::tls::CertStyle;

/// The largest message accepted, in bytes (advertised as `SIZE`); larger ones get `552`.
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// The name the server gives itself in its greeting and EHLO answer.
const SERVER_NAME: &str = "sandbox.crm-jobs";
/// A command line longer than this is refused and the connection closed.
const MAX_COMMAND_LINE: usize = 64 * 1024;
/// Message lines are read in pieces of at most this size, so one huge line cannot eat memory.
const DATA_PIECE: usize = 64 * 1024;
/// RFC 5321 §4.5.3.2 suggests 5 minutes; a stuck test client should not keep a task forever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// More recipients than this in one transaction get `452`.
const MAX_RECIPIENTS: usize = 1000;

/// A message as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The reverse-path of `MAIL FROM`, without angle brackets (empty for the null sender).
    pub from: String,
    /// The forward-paths of the accepted `RCPT TO`s, without angle brackets.
    pub to: Vec<String>,
    /// The raw message, dot-unstuffed, every line ending in CRLF, without the final dot.
    pub data: String,
    /// Whether the session was under TLS (STARTTLS or implicit).
    pub tls: bool,
    /// The user that authenticated in this session, if any.
    pub auth_user: Option<String>,
    /// The connection it came over: 1 for the server's first accepted connection, and so on.
    pub connection: u64,
}

/// What the next transactions do. Faults wait in one queue; each event takes the first queued
/// fault that applies to it and leaves the others for later events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmtpFault {
    /// Refuse the connection right after accept (close without greeting).
    RefuseConnection,
    /// Answer this code + text to MAIL FROM (e.g. 451 temporary, 550 permanent).
    RejectMail { code: u16, text: String },
    /// Hang up on MAIL FROM without answering (a server that closed an idle connection): the
    /// client cannot have handed the message over.
    HangUpAtMail,
    /// Answer this code + text after the data's final dot (message not stored).
    RejectData { code: u16, text: String },
    /// Store the message, then drop the connection without answering the final dot: the
    /// ambiguous case (the client cannot know it was delivered).
    DropAfterData,
}

/// A running fake SMTP server. Dropping it stops the listener and every open session.
pub struct SmtpServer {
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

/// What the listener and every session share.
struct Shared {
    /// Where the server listens; kept when going down, to reopen the same port.
    addr: SocketAddr,
    state: Mutex<State>,
    /// Wakes the accept loop when the listening socket was closed or opened again.
    listener_changed: tokio::sync::Notify,
    /// The server's runtime, to register a socket reopened from outside it (`set_down(false)`).
    runtime: tokio::runtime::Handle,
    /// Signalled each time a message is stored, for `wait_received`.
    stored: Condvar,
    /// Wakes the sessions held after their data.
    released: tokio::sync::Notify,
    user: String,
    password: String,
    /// Connections accepted so far (refused ones not counted).
    connections: AtomicU64,
    /// Successful AUTH exchanges so far.
    logins: AtomicU64,
    /// Flushes of replies so far (a client's round trips).
    flushes: AtomicU64,
}

/// The switches and the mailbox, behind the mutex.
struct State {
    /// The listening socket; `None` while down, so that connecting is refused by the kernel.
    listener: Option<TcpListener>,
    faults: VecDeque<SmtpFault>,
    down: bool,
    require_tls: bool,
    require_auth: bool,
    implicit_tls: bool,
    received: Vec<Received>,
    /// Once this many messages are stored, the next ones are stored and then left without an
    /// answer until [`SmtpServer::release`] (a process killed there cannot know they went).
    hold_after: Option<usize>,
    /// How long each flush of replies waits.
    reply_latency: Duration,
    /// The TLS side: the PEM a client must trust, and the acceptor.
    certificate_pem: String,
    acceptor: TlsAcceptor,
}

impl SmtpServer {
    /// Starts on 127.0.0.1:port (0 = any) in the CURRENT tokio runtime (spawned task), with a
    /// fresh self-signed `CA:TRUE` certificate for `localhost` and `127.0.0.1`, as `openssl req
    /// -x509` makes it (see [`SmtpServer::set_certificate`]); `user`/`password` are the accepted
    /// AUTH credentials.
    pub async fn start(port: u16, user: &str, password: &str) -> anyhow::Result<SmtpServer> {
        let certified = super::tls::certificate(CertStyle::SelfSigned)
            .context("failed to make the SMTP sandbox's certificate")?;

        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("failed to bind the SMTP sandbox to 127.0.0.1:{port}"))?;
        let addr = listener
            .local_addr()
            .context("failed to read the SMTP sandbox's address")?;
        let shared = Arc::new(Shared {
            addr,
            listener_changed: tokio::sync::Notify::new(),
            runtime: tokio::runtime::Handle::current(),
            state: Mutex::new(State {
                listener: Some(listener),
                faults: VecDeque::new(),
                down: false,
                require_tls: false,
                require_auth: true,
                implicit_tls: false,
                received: Vec::new(),
                hold_after: None,
                reply_latency: Duration::ZERO,
                certificate_pem: certified.trust_pem,
                acceptor: TlsAcceptor::from(Arc::new(certified.config)),
            }),
            stored: Condvar::new(),
            released: tokio::sync::Notify::new(),
            user: user.to_string(),
            password: password.to_string(),
            connections: AtomicU64::new(0),
            logins: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(shared.clone()));
        Ok(SmtpServer {
            shared,
            accept_task,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The PEM a client must trust for TLS: the certificate itself when self-signed, else the
    /// test CA that signed it.
    pub fn certificate_pem(&self) -> String {
        self.shared.lock().certificate_pem.clone()
    }

    /// Presents a fresh certificate made the given way on new TLS sessions.
    pub fn set_certificate(&self, style: CertStyle) -> anyhow::Result<()> {
        let certified = super::tls::certificate(style)?;
        let mut state = self.shared.lock();
        state.certificate_pem = certified.trust_pem;
        state.acceptor = TlsAcceptor::from(Arc::new(certified.config));
        Ok(())
    }

    /// Waits this long before each flush of replies (default none): a round trip's latency.
    pub fn set_reply_latency(&self, latency: Duration) {
        self.shared.lock().reply_latency = latency;
    }

    /// Connections accepted so far (not counting refused ones).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Successful AUTH exchanges so far.
    pub fn logins(&self) -> u64 {
        self.shared.logins.load(Ordering::SeqCst)
    }

    /// Flushes of held replies so far: the round trips clients waited for.
    pub fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::SeqCst)
    }

    /// Queue a fault for the next matching event: a connection for `RefuseConnection`, a
    /// `MAIL FROM` for `RejectMail` and `HangUpAtMail`, a final dot for `RejectData` and
    /// `DropAfterData`.
    pub fn push_fault(&self, fault: SmtpFault) {
        self.shared.lock().faults.push_back(fault);
    }

    /// Go down (refuse every connection) or up again. Down closes the listening socket, so
    /// that clients get "connection refused" as from a stopped server; up reopens the same
    /// port before returning.
    pub fn set_down(&self, down: bool) {
        let mut state = self.shared.lock();
        state.down = down;
        if down {
            state.listener = None;
        } else if state.listener.is_none() {
            // If the port cannot be had right now, the accept loop keeps trying.
            state.listener = self.shared.rebind().ok();
        }
        drop(state);
        self.shared.listener_changed.notify_one();
    }

    /// Require STARTTLS before AUTH/MAIL (default false). While TLS is required and not yet
    /// active, AUTH is not advertised.
    pub fn set_require_tls(&self, on: bool) {
        self.shared.lock().require_tls = on;
    }

    /// Require AUTH before MAIL (default true).
    pub fn set_require_auth(&self, on: bool) {
        self.shared.lock().require_auth = on;
    }

    /// Speak TLS from the first byte on new connections (SMTPS, "implicit TLS", port 465
    /// style) instead of offering STARTTLS (default false).
    pub fn set_implicit_tls(&self, on: bool) {
        self.shared.lock().implicit_tls = on;
    }

    /// Lets `n` more messages through, then stores each next one and holds its answer to the
    /// final dot until [`SmtpServer::release`].
    pub fn hold_after_messages(&self, n: usize) {
        let mut state = self.shared.lock();
        state.hold_after = Some(state.received.len() + n);
    }

    /// Answers the held messages and holds no more.
    pub fn release(&self) {
        self.shared.lock().hold_after = None;
        self.shared.released.notify_waiters();
    }

    /// Messages stored so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// Blocks (std, not async) until `n` messages are stored or `timeout` passes; returns the
    /// count. Call it from a thread that does not run the server's runtime (e.g. through
    /// `spawn_blocking`): on a current-thread runtime it would block the server itself.
    pub fn wait_received(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.received.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .shared
                .stored
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.received.len()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every open session too.
        self.accept_task.abort();
        self.shared.lock().listener = None;
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere (a failed test) must not hide the mailbox from the other tests.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes and returns the first queued fault that `applies` accepts.
    fn take_fault(&self, applies: impl Fn(&SmtpFault) -> bool) -> Option<SmtpFault> {
        let mut state = self.lock();
        let index = state.faults.iter().position(applies)?;
        state.faults.remove(index)
    }

    /// Opens the listening socket again on the same address.
    fn rebind(&self) -> io::Result<TcpListener> {
        let listener = std::net::TcpListener::bind(self.addr)?;
        listener.set_nonblocking(true)?;
        // `from_std` needs the runtime's reactor; `set_down` may run on any thread.
        let _runtime = self.runtime.enter();
        TcpListener::from_std(listener)
    }

    /// Accepts from the listening socket while there is one; while down, waits for
    /// `listener_changed` instead.
    fn poll_accept(&self, cx: &mut std::task::Context<'_>) -> Poll<io::Result<TcpStream>> {
        match &self.lock().listener {
            Some(listener) => listener.poll_accept(cx).map_ok(|(tcp, _)| tcp),
            None => Poll::Pending,
        }
    }

    /// Stores a message and returns its queue id.
    fn store(&self, message: Received) -> String {
        let mut state = self.lock();
        state.received.push(message);
        let id = format!("SB{:06}", state.received.len());
        drop(state);
        self.stored.notify_all();
        id
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    let mut sessions = JoinSet::new();
    loop {
        let must_rebind = {
            let state = shared.lock();
            !state.down && state.listener.is_none()
        };
        tokio::select! {
            accepted = std::future::poll_fn(|cx| shared.poll_accept(cx)) => {
                let Ok(tcp) = accepted else {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                // Connections accepted just before `set_down(true)` closed the socket.
                let down = shared.lock().down;
                if down || shared.take_fault(|f| *f == SmtpFault::RefuseConnection).is_some() {
                    drop(tcp);
                    continue;
                }
                let shared = shared.clone();
                let connection = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                sessions.spawn(async move {
                    // A broken connection only ends its own session; the client sees it.
                    let _ = serve(&shared, tcp, connection).await;
                });
            }
            () = shared.listener_changed.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(50)), if must_rebind => {
                let mut state = shared.lock();
                if !state.down && state.listener.is_none() {
                    state.listener = shared.rebind().ok();
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

/// How a session ended.
enum Ending {
    /// QUIT, or a reason to hang up: close the connection.
    Close,
    /// `220 Ready to start TLS` was sent: hand the socket to the TLS acceptor.
    StartTls,
}

/// The session's stream: reads buffered, replies held until flushed.
type Io<S> = BufReader<BufWriter<S>>;

async fn serve(shared: &Shared, tcp: TcpStream, connection: u64) -> io::Result<()> {
    // As asyncio (aiosmtpd) does: replies are not held back by Nagle's algorithm.
    tcp.set_nodelay(true)?;
    let (implicit_tls, acceptor) = {
        let state = shared.lock();
        (state.implicit_tls, state.acceptor.clone())
    };
    if implicit_tls {
        let tls = with_idle_timeout(acceptor.accept(tcp)).await?;
        let mut io = BufReader::new(BufWriter::new(tls));
        session(shared, &mut io, true, true, connection).await?;
        return io.get_mut().flush().await;
    }
    let mut plain = BufReader::new(BufWriter::new(tcp));
    let ending = session(shared, &mut plain, false, true, connection).await?;
    plain.get_mut().flush().await?;
    if let Ending::StartTls = ending {
        // `into_inner` drops anything the client pipelined after STARTTLS, as RFC 3207 §4.2
        // requires (plaintext injected before the handshake must not be obeyed).
        let tcp = plain.into_inner().into_inner();
        let tls = with_idle_timeout(acceptor.accept(tcp)).await?;
        // After STARTTLS the client greets again and there is no new banner.
        let mut io = BufReader::new(BufWriter::new(tls));
        session(shared, &mut io, true, false, connection).await?;
        io.get_mut().flush().await?;
    }
    Ok(())
}

/// Sends the replies held so far, `reply_latency` late, unless the client already sent more
/// commands (they are answered together).
async fn flush_if_idle<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut Io<S>,
) -> io::Result<()> {
    if !io.buffer().is_empty() || io.get_ref().buffer().is_empty() {
        return Ok(());
    }
    let latency = shared.lock().reply_latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    shared.flushes.fetch_add(1, Ordering::SeqCst);
    io.get_mut().flush().await
}

async fn with_idle_timeout<T>(fut: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(IDLE_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")))
}

/// The transaction being built between MAIL and the final dot.
struct Envelope {
    from: String,
    to: Vec<String>,
}

/// One SMTP session, from the greeting (or the TLS handshake) to QUIT, STARTTLS or a hang-up.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut Io<S>,
    tls: bool,
    greet: bool,
    connection: u64,
) -> io::Result<Ending> {
    if greet {
        reply(io, 220, &format!("{SERVER_NAME} ESMTP")).await?;
    }
    let mut greeted = false;
    let mut auth_user: Option<String> = None;
    let mut envelope: Option<Envelope> = None;
    let mut line = Vec::new();
    loop {
        let Some(command) = read_command(shared, io, &mut line).await? else {
            return Ok(Ending::Close);
        };
        let (verb, args) = match command.split_once(' ') {
            Some((verb, args)) => (verb.to_ascii_uppercase(), args.trim()),
            None => (command.to_ascii_uppercase(), ""),
        };
        let (require_tls, require_auth) = {
            let state = shared.lock();
            (state.require_tls, state.require_auth)
        };
        let tls_missing = require_tls && !tls;
        match verb.as_str() {
            "EHLO" => {
                greeted = true;
                envelope = None;
                let mut lines = vec![
                    format!("{SERVER_NAME} greets {args}"),
                    "PIPELINING".to_string(),
                    "8BITMIME".to_string(),
                    "SMTPUTF8".to_string(),
                    format!("SIZE {MAX_MESSAGE_BYTES}"),
                ];
                if !tls {
                    lines.push("STARTTLS".to_string());
                }
                if !tls_missing {
                    lines.push("AUTH PLAIN LOGIN".to_string());
                }
                reply_lines(io, 250, &lines).await?;
            }
            "HELO" => {
                greeted = true;
                envelope = None;
                reply(io, 250, SERVER_NAME).await?;
            }
            "STARTTLS" if tls => reply(io, 503, "5.5.1 TLS already active").await?,
            "STARTTLS" if !args.is_empty() => reply(io, 501, "5.5.4 Syntax: STARTTLS").await?,
            "STARTTLS" => {
                reply(io, 220, "Ready to start TLS").await?;
                return Ok(Ending::StartTls);
            }
            "AUTH" if !greeted => reply(io, 503, "5.5.1 Send EHLO first").await?,
            "AUTH" if auth_user.is_some() => reply(io, 503, "5.5.1 Already authenticated").await?,
            "AUTH" if envelope.is_some() => {
                reply(io, 503, "5.5.1 AUTH not allowed during a mail transaction").await?;
            }
            "AUTH" if tls_missing => {
                reply(io, 530, "5.7.0 Must issue a STARTTLS command first").await?;
            }
            "AUTH" => match authenticate(shared, io, &mut line, args).await? {
                Auth::Accepted(user) => {
                    shared.logins.fetch_add(1, Ordering::SeqCst);
                    auth_user = Some(user);
                    reply(io, 235, "2.7.0 Authentication successful").await?;
                }
                Auth::Rejected => {
                    reply(io, 535, "5.7.8 Authentication credentials invalid").await?;
                }
                Auth::Answered => {}
                Auth::Hangup => return Ok(Ending::Close),
            },
            "MAIL" if !greeted => reply(io, 503, "5.5.1 Send EHLO/HELO first").await?,
            "MAIL" if tls_missing => {
                reply(io, 530, "5.7.0 Must issue a STARTTLS command first").await?;
            }
            "MAIL" if require_auth && auth_user.is_none() => {
                reply(io, 530, "5.7.0 Authentication required").await?;
            }
            "MAIL" if envelope.is_some() => reply(io, 503, "5.5.1 Nested MAIL command").await?,
            "MAIL" => match parse_path(args, "FROM:") {
                None => reply(io, 501, "5.5.4 Syntax: MAIL FROM:<address>").await?,
                Some((from, params)) => {
                    if declared_size(&params).is_some_and(|size| size > MAX_MESSAGE_BYTES) {
                        reply(io, 552, "5.3.4 Message size exceeds fixed maximum").await?;
                    } else if let Some(fault) = shared.take_fault(|f| {
                        matches!(f, SmtpFault::RejectMail { .. } | SmtpFault::HangUpAtMail)
                    }) {
                        match fault {
                            SmtpFault::RejectMail { code, text } => reply(io, code, &text).await?,
                            _ => return Ok(Ending::Close),
                        }
                    } else {
                        envelope = Some(Envelope {
                            from,
                            to: Vec::new(),
                        });
                        reply(io, 250, "2.1.0 Ok").await?;
                    }
                }
            },
            "RCPT" => match (&mut envelope, parse_path(args, "TO:")) {
                (None, _) => reply(io, 503, "5.5.1 Need MAIL before RCPT").await?,
                (Some(_), None) => reply(io, 501, "5.5.4 Syntax: RCPT TO:<address>").await?,
                (Some(_), Some((to, _))) if to.is_empty() => {
                    reply(io, 501, "5.1.3 Empty recipient").await?;
                }
                (Some(env), Some(_)) if env.to.len() >= MAX_RECIPIENTS => {
                    reply(io, 452, "4.5.3 Too many recipients").await?;
                }
                (Some(env), Some((to, _))) => {
                    env.to.push(to);
                    reply(io, 250, "2.1.5 Ok").await?;
                }
            },
            "DATA" if !args.is_empty() => reply(io, 501, "5.5.4 Syntax: DATA").await?,
            "DATA" => {
                let Some(Envelope { from, to }) = envelope.take() else {
                    reply(io, 503, "5.5.1 Need MAIL command").await?;
                    continue;
                };
                if to.is_empty() {
                    envelope = Some(Envelope { from, to });
                    reply(io, 503, "5.5.1 Need RCPT command").await?;
                    continue;
                }
                reply(io, 354, "End data with <CR><LF>.<CR><LF>").await?;
                let Some(data) = read_data(shared, io).await? else {
                    reply(io, 552, "5.3.4 Message size exceeds fixed maximum").await?;
                    continue;
                };
                let fault = shared.take_fault(|f| {
                    matches!(f, SmtpFault::RejectData { .. } | SmtpFault::DropAfterData)
                });
                if let Some(SmtpFault::RejectData { code, text }) = fault {
                    reply(io, code, &text).await?;
                    continue;
                }
                let id = shared.store(Received {
                    from,
                    to,
                    data: String::from_utf8_lossy(&data).into_owned(),
                    tls,
                    auth_user: auth_user.clone(),
                    connection,
                });
                if fault == Some(SmtpFault::DropAfterData) {
                    return Ok(Ending::Close);
                }
                loop {
                    let released = shared.released.notified();
                    let held = {
                        let state = shared.lock();
                        state.hold_after.is_some_and(|k| state.received.len() > k)
                    };
                    if !held {
                        break;
                    }
                    released.await;
                }
                reply(io, 250, &format!("2.0.0 Ok: queued as {id}")).await?;
            }
            "RSET" => {
                envelope = None;
                reply(io, 250, "2.0.0 Ok").await?;
            }
            "NOOP" => reply(io, 250, "2.0.0 Ok").await?,
            "QUIT" => {
                reply(io, 221, "2.0.0 Bye").await?;
                // Under TLS this sends close_notify; the client is leaving anyway.
                let _ = io.get_mut().shutdown().await;
                return Ok(Ending::Close);
            }
            _ => reply(io, 502, "5.5.2 Command not recognized").await?,
        }
    }
}

/// The outcome of an AUTH exchange.
enum Auth {
    Accepted(String),
    Rejected,
    /// An error reply (syntax, cancel, unknown mechanism) was already sent.
    Answered,
    /// The client went away or sent a line too long to resynchronise.
    Hangup,
}

async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut Io<S>,
    line: &mut Vec<u8>,
    args: &str,
) -> io::Result<Auth> {
    let (mechanism, initial) = match args.split_once(' ') {
        Some((mechanism, initial)) => (mechanism.to_ascii_uppercase(), Some(initial.trim())),
        None => (args.to_ascii_uppercase(), None),
    };
    let (user, password) = match mechanism.as_str() {
        "PLAIN" => {
            let response = match initial {
                Some(initial) => initial.to_string(),
                None => match challenge(shared, io, line, "").await? {
                    Some(response) => response,
                    None => return Ok(Auth::Hangup),
                },
            };
            // An empty initial response is sent as "=" (RFC 4954 §4).
            let Some(decoded) = decode_response(io, &response).await? else {
                return Ok(Auth::Answered);
            };
            let mut parts = decoded.split(|&b| b == 0);
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(_authzid), Some(user), Some(password), None) => {
                    (user.to_vec(), password.to_vec())
                }
                _ => {
                    reply(io, 501, "5.5.2 Malformed PLAIN response").await?;
                    return Ok(Auth::Answered);
                }
            }
        }
        "LOGIN" => {
            let user = match initial {
                Some(initial) => initial.to_string(),
                None => match challenge(shared, io, line, &BASE64.encode("Username:")).await? {
                    Some(response) => response,
                    None => return Ok(Auth::Hangup),
                },
            };
            let Some(user) = decode_response(io, &user).await? else {
                return Ok(Auth::Answered);
            };
            let Some(password) = challenge(shared, io, line, &BASE64.encode("Password:")).await?
            else {
                return Ok(Auth::Hangup);
            };
            let Some(password) = decode_response(io, &password).await? else {
                return Ok(Auth::Answered);
            };
            (user, password)
        }
        _ => {
            reply(io, 504, "5.5.4 Unrecognized authentication type").await?;
            return Ok(Auth::Answered);
        }
    };
    if user == shared.user.as_bytes() && password == shared.password.as_bytes() {
        Ok(Auth::Accepted(shared.user.clone()))
    } else {
        Ok(Auth::Rejected)
    }
}

/// Sends a `334` challenge and reads the client's answer line.
async fn challenge<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut Io<S>,
    line: &mut Vec<u8>,
    text: &str,
) -> io::Result<Option<String>> {
    reply(io, 334, text).await?;
    read_command(shared, io, line).await
}

/// Decodes a base64 AUTH response, answering `501` (and returning `None`) on `*` or bad base64.
async fn decode_response<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    response: &str,
) -> io::Result<Option<Vec<u8>>> {
    if response == "*" {
        reply(io, 501, "5.7.0 Authentication cancelled").await?;
        return Ok(None);
    }
    if response == "=" {
        return Ok(Some(Vec::new()));
    }
    match BASE64.decode(response) {
        Ok(decoded) => Ok(Some(decoded)),
        Err(_) => {
            reply(io, 501, "5.5.2 Cannot decode response").await?;
            Ok(None)
        }
    }
}

/// Parses `FROM:<address> PARAM=VALUE ...` (or `TO:`), leniently: the keyword is
/// case-insensitive, a space may follow the colon, and the brackets may be missing.
fn parse_path(args: &str, keyword: &str) -> Option<(String, Vec<String>)> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args[keyword.len()..].trim_start();
    let (address, params) = match rest.strip_prefix('<') {
        Some(inner) => {
            let end = inner.find('>')?;
            (&inner[..end], &inner[end + 1..])
        }
        None => match rest.split_once(' ') {
            Some((address, params)) => (address, params),
            None => (rest, ""),
        },
    };
    if address.contains(|c: char| c.is_whitespace() || c == '<' || c == '>') {
        return None;
    }
    let params = params.split_whitespace().map(str::to_string).collect();
    Some((address.to_string(), params))
}

/// The `SIZE=` a client declared in MAIL FROM, if any (RFC 1870).
fn declared_size(params: &[String]) -> Option<usize> {
    params.iter().find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.eq_ignore_ascii_case("SIZE")
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// Reads one command line without its line ending; `None` when the client is gone. A line over
/// `MAX_COMMAND_LINE` gets `500` and ends the session (there is no telling where the next
/// command starts).
async fn read_command<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut Io<S>,
    line: &mut Vec<u8>,
) -> io::Result<Option<String>> {
    flush_if_idle(shared, io).await?;
    line.clear();
    let limit = MAX_COMMAND_LINE as u64 + 2;
    let n = with_idle_timeout((&mut *io).take(limit).read_until(b'\n', line)).await?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\n") {
        if line.len() as u64 >= limit {
            reply(io, 500, "5.5.2 Line too long").await?;
        }
        return Ok(None);
    }
    let text = String::from_utf8_lossy(line);
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()))
}

/// Reads the message after `354` up to the lone dot, undoing dot-stuffing and turning bare LFs
/// into CRLF. `None` when it was larger than `MAX_MESSAGE_BYTES` (the rest is read and dropped
/// so that the session can go on).
async fn read_data<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut Io<S>,
) -> io::Result<Option<Vec<u8>>> {
    flush_if_idle(shared, io).await?;
    let mut data = Vec::new();
    let mut too_big = false;
    let mut at_line_start = true;
    let mut piece = Vec::new();
    loop {
        piece.clear();
        let n = with_idle_timeout(
            (&mut *io)
                .take(DATA_PIECE as u64)
                .read_until(b'\n', &mut piece),
        )
        .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed during DATA",
            ));
        }
        let ends_line = piece.ends_with(b"\n");
        let mut content = piece.as_slice();
        if at_line_start {
            if content == b".\r\n" || content == b".\n" {
                break;
            }
            if let Some(unstuffed) = content.strip_prefix(b".") {
                content = unstuffed;
            }
        }
        if !too_big {
            if ends_line {
                data.extend_from_slice(&content[..content.len() - 1]);
                // The CR may have ended the previous piece when a long line was split there.
                if data.last() != Some(&b'\r') {
                    data.push(b'\r');
                }
                data.push(b'\n');
            } else {
                data.extend_from_slice(content);
            }
            if data.len() > MAX_MESSAGE_BYTES {
                too_big = true;
                data = Vec::new();
            }
        }
        at_line_start = ends_line;
    }
    Ok((!too_big).then_some(data))
}

/// Queues a reply; it goes out with the next flush.
async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    code: u16,
    text: &str,
) -> io::Result<()> {
    io.get_mut()
        .write_all(format!("{code} {text}\r\n").as_bytes())
        .await
}

/// A multi-line reply: `code-` on every line but the last.
async fn reply_lines<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    code: u16,
    lines: &[String],
) -> io::Result<()> {
    let mut text = String::new();
    for (i, line) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        text.push_str(&format!("{code}{sep}{line}\r\n"));
    }
    io.get_mut().write_all(text.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use lettre::message::{Mailbox, MultiPart};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    const USER: &str = "cobranca@crm-jobs.test";
    const PASSWORD: &str = "senha-do-sandbox";
    const SUBJECT: &str = "⚠️ Sua assinatura expira em 3 dias";

    async fn server() -> SmtpServer {
        SmtpServer::start(0, USER, PASSWORD).await.expect("start")
    }

    fn transport(
        server: &SmtpServer,
        password: &str,
        tls: Tls,
    ) -> AsyncSmtpTransport<Tokio1Executor> {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(server.addr().port())
            .credentials(Credentials::new(USER.to_string(), password.to_string()))
            .tls(tls)
            .timeout(Some(Duration::from_secs(10)))
            .build()
    }

    fn plain(server: &SmtpServer) -> AsyncSmtpTransport<Tokio1Executor> {
        transport(server, PASSWORD, Tls::None)
    }

    /// Trusts only the test CA that signed the server's certificate, for the name `localhost`
    /// (lettre, like WebPKI, refuses a self-signed `CA:TRUE` certificate as a server's own).
    fn tls_parameters(server: &SmtpServer) -> TlsParameters {
        server.set_certificate(CertStyle::SignedByTestCa).unwrap();
        let pem = server.certificate_pem();
        TlsParameters::builder("localhost".to_string())
            .certificate_store(CertificateStore::None)
            .add_root_certificate(Certificate::from_pem(pem.as_bytes()).expect("pem"))
            .build_rustls()
            .expect("tls parameters")
    }

    fn message(subject: &str) -> Message {
        Message::builder()
            .from(
                "Cobrança CRM <cobranca@crm-jobs.test>"
                    .parse::<Mailbox>()
                    .unwrap(),
            )
            .to("João da Silva <joao@example.com.br>"
                .parse::<Mailbox>()
                .unwrap())
            .message_id(Some("<renew-42@crm-jobs.test>".to_string()))
            .subject(subject)
            .multipart(MultiPart::alternative_plain_html(
                "Olá João, sua assinatura expira em 3 dias.".to_string(),
                "<p>Olá João, sua assinatura expira em <b>3 dias</b>.</p>".to_string(),
            ))
            .unwrap()
    }

    /// Decodes a header value made of RFC 2047 encoded-words (B or Q, UTF-8) and plain words.
    fn decode_rfc2047(value: &str) -> String {
        let mut out = String::new();
        let mut last_was_encoded = false;
        for (i, word) in value.split_whitespace().enumerate() {
            let encoded = word
                .strip_prefix("=?")
                .and_then(|w| w.strip_suffix("?="))
                .and_then(|w| {
                    let mut parts = w.splitn(3, '?');
                    Some((parts.next()?, parts.next()?, parts.next()?))
                });
            match encoded {
                Some((charset, encoding, text)) => {
                    assert!(charset.eq_ignore_ascii_case("utf-8"), "charset {charset}");
                    let bytes = if encoding.eq_ignore_ascii_case("b") {
                        BASE64.decode(text).expect("base64 word")
                    } else {
                        let mut bytes = Vec::new();
                        let mut chars = text.bytes();
                        while let Some(b) = chars.next() {
                            match b {
                                b'_' => bytes.push(b' '),
                                b'=' => {
                                    let hex = [chars.next().unwrap(), chars.next().unwrap()];
                                    let hex = std::str::from_utf8(&hex).unwrap();
                                    bytes.push(u8::from_str_radix(hex, 16).unwrap());
                                }
                                b => bytes.push(b),
                            }
                        }
                        bytes
                    };
                    if !last_was_encoded && i > 0 {
                        out.push(' ');
                    }
                    out.push_str(&String::from_utf8(bytes).expect("utf-8 word"));
                    last_was_encoded = true;
                }
                None => {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str(word);
                    last_was_encoded = false;
                }
            }
        }
        out
    }

    /// The raw (unfolded) value of a header in a stored message.
    fn raw_header(data: &str, name: &str) -> String {
        let head = data.split("\r\n\r\n").next().unwrap();
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            match &mut value {
                Some(v) if line.starts_with([' ', '\t']) => v.push_str(line),
                Some(_) => break,
                None => {
                    if let Some((n, v)) = line.split_once(':')
                        && n.eq_ignore_ascii_case(name)
                    {
                        value = Some(v.trim_start().to_string());
                    }
                }
            }
        }
        value.unwrap_or_else(|| panic!("no {name} header in {data}"))
    }

    #[tokio::test]
    async fn plain_with_auth_is_stored() {
        let server = server().await;
        plain(&server).send(message("Teste")).await.expect("send");
        let received = server.received();
        assert_eq!(received.len(), 1);
        let got = &received[0];
        assert_eq!(got.from, "cobranca@crm-jobs.test");
        assert_eq!(got.to, vec!["joao@example.com.br".to_string()]);
        assert!(!got.tls);
        assert_eq!(got.auth_user.as_deref(), Some(USER));
        assert!(
            got.data
                .contains("Message-ID: <renew-42@crm-jobs.test>\r\n")
        );
        assert!(got.data.contains("multipart/alternative"));
        assert!(got.data.ends_with("\r\n"));
        assert!(!got.data.ends_with(".\r\n"), "final dot stored");
    }

    #[tokio::test]
    async fn starttls_required_with_the_sandbox_certificate() {
        let server = server().await;
        server.set_require_tls(true);

        // Without TLS, AUTH is not even offered, so the client cannot log in.
        let err = plain(&server).send(message("Teste")).await.unwrap_err();
        assert!(err.is_client(), "{err:?}");
        server.set_require_auth(false);
        let anonymous = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(server.addr().port())
            .tls(Tls::None)
            .build();
        let err = anonymous.send(message("Teste")).await.unwrap_err();
        assert_eq!(err.status().map(u16::from), Some(530), "{err:?}");
        server.set_require_auth(true);
        assert!(server.received().is_empty());

        let client = transport(&server, PASSWORD, Tls::Required(tls_parameters(&server)));
        client
            .send(message("Teste"))
            .await
            .expect("send over STARTTLS");
        let received = server.received();
        assert_eq!(received.len(), 1);
        assert!(received[0].tls);
        assert_eq!(received[0].auth_user.as_deref(), Some(USER));
    }

    #[tokio::test]
    async fn implicit_tls() {
        let server = server().await;
        server.set_implicit_tls(true);
        let client = transport(&server, PASSWORD, Tls::Wrapper(tls_parameters(&server)));
        client.send(message("Teste")).await.expect("send over TLS");
        assert!(server.received()[0].tls);
    }

    #[tokio::test]
    async fn utf8_subject_arrives_rfc2047_encoded() {
        let server = server().await;
        plain(&server).send(message(SUBJECT)).await.expect("send");
        let data = server.received()[0].data.clone();
        let subject = raw_header(&data, "Subject");
        assert!(
            subject.to_ascii_lowercase().starts_with("=?utf-8?"),
            "raw subject {subject:?}"
        );
        assert!(subject.is_ascii());
        assert_eq!(decode_rfc2047(&subject), SUBJECT);
    }

    #[tokio::test]
    async fn rejected_mail_and_data_are_transient_and_permanent() {
        let server = server().await;
        server.push_fault(SmtpFault::RejectMail {
            code: 451,
            text: "4.3.0 Try again later".to_string(),
        });
        let err = plain(&server).send(message("Teste")).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert_eq!(err.status().map(u16::from), Some(451));

        server.push_fault(SmtpFault::RejectData {
            code: 550,
            text: "5.7.1 Message rejected".to_string(),
        });
        let err = plain(&server).send(message("Teste")).await.unwrap_err();
        assert!(err.is_permanent(), "{err:?}");
        assert_eq!(err.status().map(u16::from), Some(550));
        assert!(server.received().is_empty());

        // Faults are consumed: the next message goes through.
        plain(&server).send(message("Teste")).await.expect("send");
        assert_eq!(server.received().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_after_data_stores_but_the_client_gets_an_error() {
        let server = Arc::new(server().await);
        server.push_fault(SmtpFault::DropAfterData);
        let err = plain(&server).send(message("Teste")).await.unwrap_err();
        assert!(!err.is_permanent(), "{err:?}");
        assert!(err.status().is_none(), "{err:?}");
        let waiter = server.clone();
        let count =
            tokio::task::spawn_blocking(move || waiter.wait_received(1, Duration::from_secs(5)))
                .await
                .unwrap();
        assert_eq!(count, 1);
        assert!(server.received()[0].data.contains("renew-42@crm-jobs.test"));
    }

    #[tokio::test]
    async fn down_refuses_then_up_works_again() {
        let server = server().await;
        server.set_down(true);
        let err = plain(&server).send(message("Teste")).await.unwrap_err();
        assert!(err.status().is_none(), "{err:?}");
        let refused = TcpStream::connect(server.addr()).await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        server.set_down(false);
        plain(&server).send(message("Teste")).await.expect("send");
        assert_eq!(server.received().len(), 1);

        server.push_fault(SmtpFault::RefuseConnection);
        assert!(plain(&server).send(message("Teste")).await.is_err());
        plain(&server).send(message("Teste")).await.expect("send");
        assert_eq!(server.received().len(), 2);
    }

    #[tokio::test]
    async fn wrong_password_is_an_auth_error() {
        let server = server().await;
        let err = transport(&server, "errada", Tls::None)
            .send(message("Teste"))
            .await
            .unwrap_err();
        assert!(err.is_permanent(), "{err:?}");
        assert_eq!(err.status().map(u16::from), Some(535));
        assert!(server.received().is_empty());
    }

    /// A bare client: writes lines, reads (multi-line) replies.
    struct Raw {
        io: BufReader<TcpStream>,
    }

    impl Raw {
        async fn connect(server: &SmtpServer) -> Raw {
            let tcp = TcpStream::connect(server.addr()).await.unwrap();
            let mut raw = Raw {
                io: BufReader::new(tcp),
            };
            assert_eq!(raw.reply().await, "220 sandbox.crm-jobs ESMTP");
            raw
        }

        async fn send(&mut self, text: &str) {
            self.io.get_mut().write_all(text.as_bytes()).await.unwrap();
        }

        /// The last line of the next reply, without CRLF.
        async fn reply(&mut self) -> String {
            loop {
                let mut line = String::new();
                self.io.read_line(&mut line).await.unwrap();
                assert!(line.ends_with("\r\n"), "bad reply line {line:?}");
                if line.as_bytes().get(3) != Some(&b'-') {
                    return line.trim_end().to_string();
                }
            }
        }

        async fn command(&mut self, line: &str) -> String {
            self.send(&format!("{line}\r\n")).await;
            self.reply().await
        }
    }

    fn code(reply: &str) -> &str {
        &reply[..3]
    }

    #[tokio::test]
    async fn raw_session_unstuffs_dots_and_keeps_order() {
        let server = server().await;
        let mut raw = Raw::connect(&server).await;
        assert_eq!(code(&raw.command("MAIL FROM:<a@b.c>").await), "503");
        assert_eq!(code(&raw.command("EHLO cliente.test").await), "250");
        assert_eq!(code(&raw.command("MAIL FROM:<a@b.c>").await), "530");
        assert_eq!(code(&raw.command("RCPT TO:<x@y.z>").await), "503");
        assert_eq!(code(&raw.command("DATA").await), "503");
        assert_eq!(code(&raw.command("VRFY x").await), "502");
        assert_eq!(code(&raw.command("AUTH CRAM-MD5").await), "504");

        // AUTH PLAIN with the response on its own line.
        assert_eq!(raw.command("AUTH PLAIN").await, "334");
        let plain = BASE64.encode(format!("\0{USER}\0{PASSWORD}"));
        assert_eq!(code(&raw.command(&plain).await), "235");
        assert_eq!(code(&raw.command("AUTH PLAIN").await), "503");

        let too_big = format!("MAIL FROM:<a@b.c> SIZE={}", MAX_MESSAGE_BYTES + 1);
        assert_eq!(code(&raw.command(&too_big).await), "552");

        // Pipelined envelope, then a dot-stuffed body with a bare LF line.
        raw.send(
            "MAIL FROM:<a@b.c> BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<x@y.z>\r\nRCPT TO:<w@y.z>\r\nDATA\r\n",
        )
        .await;
        assert_eq!(code(&raw.reply().await), "250");
        assert_eq!(code(&raw.reply().await), "250");
        assert_eq!(code(&raw.reply().await), "250");
        assert_eq!(code(&raw.reply().await), "354");
        raw.send("Subject: pontos\r\n\r\n..linha com ponto\r\n...dois\r\nmeio . ponto\r\n.\r\n")
            .await;
        let queued = raw.reply().await;
        assert!(queued.starts_with("250 2.0.0 Ok: queued as "), "{queued}");

        let got = &server.received()[0];
        assert_eq!(got.from, "a@b.c");
        assert_eq!(got.to, vec!["x@y.z".to_string(), "w@y.z".to_string()]);
        assert_eq!(
            got.data,
            "Subject: pontos\r\n\r\n.linha com ponto\r\n..dois\r\nmeio . ponto\r\n"
        );
        assert_eq!(code(&raw.command("NOOP").await), "250");
        assert_eq!(code(&raw.command("QUIT").await), "221");
    }

    #[tokio::test]
    async fn raw_bare_lf_lines_become_crlf_and_auth_login_works() {
        let server = server().await;
        let mut raw = Raw::connect(&server).await;
        assert_eq!(code(&raw.command("HELO cliente.test").await), "250");
        assert_eq!(raw.command("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
        assert_eq!(raw.command(&BASE64.encode(USER)).await, "334 UGFzc3dvcmQ6");
        assert_eq!(code(&raw.command(&BASE64.encode(PASSWORD)).await), "235");
        assert_eq!(code(&raw.command("MAIL FROM:<>").await), "250");
        assert_eq!(code(&raw.command("RCPT TO:<x@y.z>").await), "250");
        assert_eq!(code(&raw.command("DATA").await), "354");
        assert_eq!(code(&raw.command("a\nb\r\n..c\n.").await), "250");
        let got = &server.received()[0];
        assert_eq!(got.from, "");
        assert_eq!(got.data, "a\r\nb\r\n.c\r\n");
        assert_eq!(code(&raw.command("RSET").await), "250");
        assert_eq!(code(&raw.command("QUIT").await), "221");
    }

    #[tokio::test]
    async fn raw_oversized_message_gets_552_and_the_session_goes_on() {
        let server = server().await;
        server.set_require_auth(false);
        let mut raw = Raw::connect(&server).await;
        assert_eq!(code(&raw.command("EHLO cliente.test").await), "250");
        assert_eq!(code(&raw.command("MAIL FROM:<a@b.c>").await), "250");
        assert_eq!(code(&raw.command("RCPT TO:<x@y.z>").await), "250");
        assert_eq!(code(&raw.command("DATA").await), "354");
        let line = format!("{}\r\n", "x".repeat(998));
        let body = line.repeat(MAX_MESSAGE_BYTES / line.len() + 10);
        raw.send(&body).await;
        assert_eq!(code(&raw.command(".").await), "552");
        assert!(server.received().is_empty());
        assert_eq!(code(&raw.command("MAIL FROM:<a@b.c>").await), "250");
    }

    #[tokio::test]
    async fn pipelined_commands_are_answered_in_one_flush_after_the_latency() {
        let server = server().await;
        server.set_require_auth(false);
        let latency = Duration::from_millis(30);
        server.set_reply_latency(latency);
        let mut raw = Raw::connect(&server).await;
        assert_eq!(code(&raw.command("EHLO cliente.test").await), "250");
        let before = server.flushes();
        let started = Instant::now();
        raw.send("MAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\n")
            .await;
        for expected in ["250", "250", "354"] {
            assert_eq!(code(&raw.reply().await), expected);
        }
        assert!(started.elapsed() >= latency);
        // One write on loopback arrives as one read: the three replies go out together.
        assert_eq!(server.flushes() - before, 1, "one round trip for the group");
        let before = server.flushes();
        assert_eq!(
            code(&raw.command("Subject: x\r\n\r\ncorpo\r\n.").await),
            "250"
        );
        assert_eq!(server.flushes() - before, 1, "one round trip for the data");
        assert_eq!(server.connections(), 1);
        assert_eq!(server.received()[0].connection, 1);
    }

    #[test]
    fn paths_parse_leniently() {
        assert_eq!(
            parse_path("FROM:<a@b.c> SIZE=10 BODY=8BITMIME", "FROM:"),
            Some((
                "a@b.c".to_string(),
                vec!["SIZE=10".to_string(), "BODY=8BITMIME".to_string()]
            ))
        );
        assert_eq!(
            parse_path("to: <x@y.z>", "TO:"),
            Some(("x@y.z".to_string(), vec![]))
        );
        assert_eq!(
            parse_path("TO:x@y.z", "TO:"),
            Some(("x@y.z".to_string(), vec![]))
        );
        assert_eq!(
            parse_path("FROM:<>", "FROM:"),
            Some((String::new(), vec![]))
        );
        assert_eq!(parse_path("FROM <a@b.c>", "FROM:"), None);
        assert_eq!(parse_path("FROM:<a@b.c", "FROM:"), None);
        assert_eq!(declared_size(&["size=12".to_string()]), Some(12));
    }
}
