//! The SMTP conversation (RFC 5321) over one connection kept open for a run's messages: connect
//! (TCP_NODELAY: a small write is never held back waiting for the server's delayed ACK), implicit
//! TLS or STARTTLS with [`crate::tls::PinningVerifier`], EHLO, AUTH PLAIN or LOGIN, then one
//! transaction per message, MAIL, RCPT and DATA sent together where the server offers
//! PIPELINING (RFC 2920), and the data with its final dot in one write.
//!
//! What a failure means for the message decides what the caller may do: before the data is
//! written the server cannot have taken it ([`SendError::NotSent`]: safe to send again); once
//! the data is being written, a connection that breaks leaves the outcome unknown
//! ([`SendError::Unknown`]: never resent by itself).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

/// How TLS is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    None,
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Implicit,
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// The name the certificate must carry.
    pub server_name: ServerName<'static>,
    /// How the server's certificate is verified; `None` without TLS.
    pub tls_config: Option<Arc<ClientConfig>>,
    /// User and password for AUTH.
    pub credentials: Option<(String, String)>,
    /// Each connect, read and write.
    pub timeout: Duration,
    /// Our name in EHLO: the machine's fully qualified name, if it has one; else (`None`) the
    /// address literal of our end of the connection (`[10.0.0.5]`), as RFC 5321 §4.1.4 asks.
    pub hello: Option<String>,
}

/// A reply: its code and its text (the lines joined by spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl std::fmt::Display for Reply {
    /// `permanent error (550): 5.1.1 Mailbox unavailable`, as lettre worded it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.code {
            400..=499 => "transient error",
            500..=599 => "permanent error",
            _ => "unexpected reply",
        };
        write!(f, "{kind} ({}): {}", self.code, self.text)
    }
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// AUTH was refused for good (5xx): the credentials are wrong.
    Credentials(Reply),
    /// Anything else: refused, timed out, TLS failed, an unexpected reply.
    Unavailable(String),
}

/// Why a message did not go.
#[derive(Debug)]
pub enum SendError {
    /// The server refused it (4xx: for now, 5xx: for good) before taking the data, or after.
    Rejected(Reply),
    /// The connection failed before the data was written: the server does not have it.
    NotSent(String),
    /// The connection failed once the data was being written: it may have been delivered.
    Unknown(String),
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An open, greeted (and authenticated) connection.
pub struct Connection {
    io: BufReader<Box<dyn Stream>>,
    timeout: Duration,
    pipelining: bool,
    eight_bit: bool,
    smtputf8: bool,
    /// Set when the conversation can no longer be trusted: the connection must not be reused.
    broken: bool,
}

/// The longest reply line read, and the most lines in one reply.
const MAX_LINE: usize = 4096;
const MAX_LINES: usize = 100;

fn io_error(what: &str, e: &std::io::Error) -> String {
    format!("{what}: {e}")
}

impl Connection {
    /// Connects, greets, upgrades to TLS as configured and authenticates.
    pub async fn open(s: &Settings) -> Result<Connection, OpenError> {
        let unavailable = OpenError::Unavailable;
        let tcp = tokio::time::timeout(s.timeout, TcpStream::connect((s.host.as_str(), s.port)))
            .await
            .map_err(|_| unavailable(format!("connecting timed out after {:?}", s.timeout)))?
            .map_err(|e| unavailable(io_error("cannot connect", &e)))?;
        tcp.set_nodelay(true)
            .map_err(|e| unavailable(io_error("cannot set TCP_NODELAY", &e)))?;
        let hello = match (&s.hello, tcp.local_addr()) {
            (Some(name), _) => name.clone(),
            (None, Ok(std::net::SocketAddr::V4(a))) => format!("[{}]", a.ip()),
            (None, Ok(std::net::SocketAddr::V6(a))) => format!("[IPv6:{}]", a.ip()),
            (None, Err(_)) => "[127.0.0.1]".to_string(),
        };
        let stream: Box<dyn Stream> = if s.tls == TlsMode::Implicit {
            Box::new(handshake(s, tcp).await?)
        } else {
            Box::new(tcp)
        };
        let mut c = Connection {
            io: BufReader::new(stream),
            timeout: s.timeout,
            pipelining: false,
            eight_bit: false,
            smtputf8: false,
            broken: false,
        };
        let greeting = c.read_reply().await.map_err(unavailable)?;
        if greeting.code != 220 {
            return Err(unavailable(format!("it greeted with {greeting}")));
        }
        let mut features = c.ehlo(&hello).await?;
        if s.tls == TlsMode::StartTls {
            if !features.iter().any(|f| f == "STARTTLS") {
                return Err(unavailable(
                    "it does not offer STARTTLS (`[smtp] tls = \"starttls\"`)".to_string(),
                ));
            }
            let reply = c.command("STARTTLS").await.map_err(unavailable)?;
            if reply.code != 220 {
                return Err(unavailable(format!("STARTTLS: {reply}")));
            }
            // Nothing the server sent before the handshake may be read after it.
            if !c.io.buffer().is_empty() {
                return Err(unavailable(
                    "it sent data after accepting STARTTLS".to_string(),
                ));
            }
            let plain = c.io.into_inner();
            c.io = BufReader::new(Box::new(handshake(s, plain).await?));
            features = c.ehlo(&hello).await?;
        }
        c.pipelining = features.iter().any(|f| f == "PIPELINING");
        c.eight_bit = features.iter().any(|f| f == "8BITMIME");
        c.smtputf8 = features.iter().any(|f| f == "SMTPUTF8");
        if let Some((user, password)) = &s.credentials {
            let mechanisms: Vec<&str> = features
                .iter()
                .filter_map(|f| f.strip_prefix("AUTH "))
                .flat_map(str::split_whitespace)
                .collect();
            let reply = if mechanisms.contains(&"PLAIN") {
                let token = BASE64.encode(format!("\0{user}\0{password}"));
                c.command(&format!("AUTH PLAIN {token}"))
                    .await
                    .map_err(unavailable)?
            } else if mechanisms.contains(&"LOGIN") {
                let mut reply = c.command("AUTH LOGIN").await.map_err(unavailable)?;
                for answer in [user, password] {
                    if reply.code != 334 {
                        break;
                    }
                    reply = c
                        .command(&BASE64.encode(answer))
                        .await
                        .map_err(unavailable)?;
                }
                reply
            } else {
                return Err(unavailable(format!(
                    "it offers no AUTH PLAIN or LOGIN for `[smtp] user` (offered: {})",
                    if mechanisms.is_empty() {
                        "none; does it want TLS first?".to_string()
                    } else {
                        mechanisms.join(", ")
                    }
                )));
            };
            match reply.code {
                235 => {}
                500..=599 => return Err(OpenError::Credentials(reply)),
                _ => return Err(unavailable(format!("AUTH: {reply}"))),
            }
        }
        Ok(c)
    }

    /// EHLO (HELO if refused): the extensions offered, in upper case.
    async fn ehlo(&mut self, hello: &str) -> Result<Vec<String>, OpenError> {
        let reply = self
            .command_lines(&format!("EHLO {hello}"))
            .await
            .map_err(OpenError::Unavailable)?;
        match reply {
            (250, lines) => Ok(lines
                .iter()
                .skip(1)
                .map(|l| l.trim().to_ascii_uppercase())
                .collect()),
            (500..=599, _) => {
                let reply = self
                    .command(&format!("HELO {hello}"))
                    .await
                    .map_err(OpenError::Unavailable)?;
                match reply.code {
                    250 => Ok(Vec::new()),
                    _ => Err(OpenError::Unavailable(format!("HELO: {reply}"))),
                }
            }
            (code, lines) => Err(OpenError::Unavailable(format!(
                "EHLO: {}",
                Reply {
                    code,
                    text: lines.join(" ")
                }
            ))),
        }
    }

    /// Whether this connection may carry another message.
    pub fn usable(&self) -> bool {
        !self.broken
    }

    /// Sends one message: `from` and `to` are the envelope's addresses, `data` the message.
    pub async fn send(&mut self, from: &str, to: &[String], data: &[u8]) -> Result<(), SendError> {
        let not_sent = |c: &mut Connection, e: String| {
            c.broken = true;
            SendError::NotSent(e)
        };
        let mut params = String::new();
        if !data.is_ascii() {
            if !self.eight_bit {
                return Err(SendError::Rejected(Reply {
                    code: 554,
                    text: "the message is not ASCII and the server does not offer 8BITMIME".into(),
                }));
            }
            params.push_str(" BODY=8BITMIME");
        }
        if !from.is_ascii() || to.iter().any(|t| !t.is_ascii()) {
            if !self.smtputf8 {
                return Err(SendError::Rejected(Reply {
                    code: 553,
                    text: "an address is not ASCII and the server does not offer SMTPUTF8".into(),
                }));
            }
            params.push_str(" SMTPUTF8");
        }
        let mut commands = vec![format!("MAIL FROM:<{from}>{params}")];
        commands.extend(to.iter().map(|t| format!("RCPT TO:<{t}>")));
        commands.push("DATA".to_string());
        // With PIPELINING the whole group goes in one write and its replies come back together
        // (DATA ends the group, RFC 2920 §3.1); without, each command waits for its reply.
        let mut replies = Vec::with_capacity(commands.len());
        if self.pipelining {
            let group: String = commands.iter().map(|c| format!("{c}\r\n")).collect();
            if let Err(e) = self.write(group.as_bytes()).await {
                return Err(not_sent(self, e));
            }
            for _ in &commands {
                match self.read_reply().await {
                    Ok(r) => replies.push(r),
                    Err(e) => return Err(not_sent(self, e)),
                }
            }
        } else {
            for command in &commands {
                let reply = match self.command(command).await {
                    Ok(r) => r,
                    Err(e) => return Err(not_sent(self, e)),
                };
                let ok = reply.code / 100 == 2 || reply.code == 354;
                replies.push(reply);
                if !ok {
                    break;
                }
            }
        }
        let (mail, rest) = replies.split_first().expect("one reply at least");
        let data_accepted =
            replies.len() == commands.len() && replies.last().is_some_and(|r| r.code == 354);
        let refusal = std::iter::once(mail)
            .chain(rest.iter().take(to.len()))
            .find(|r| r.code / 100 != 2)
            .or_else(|| replies.last().filter(|r| r.code != 354))
            .cloned();
        if let Some(refusal) = refusal {
            if refusal.code == 421 {
                self.broken = true;
            }
            if data_accepted {
                // A server that takes the data of a refused envelope: end the conversation
                // rather than guess what a dot would do.
                self.broken = true;
            } else if mail.code / 100 == 2 && !self.broken {
                // The transaction MAIL opened is still open on the server.
                match self.command("RSET").await {
                    Ok(r) if r.code == 250 => {}
                    _ => self.broken = true,
                }
            }
            return Err(SendError::Rejected(refusal));
        }
        // From here the server may end up with the message whatever we see.
        let unknown = |c: &mut Connection, e: String| {
            c.broken = true;
            SendError::Unknown(e)
        };
        let mut body = dot_stuff(data);
        body.extend_from_slice(b".\r\n");
        if let Err(e) = self.write(&body).await {
            return Err(unknown(self, e));
        }
        let reply = match self.read_reply().await {
            Ok(r) => r,
            Err(e) => return Err(unknown(self, e)),
        };
        match reply.code {
            250 => Ok(()),
            code => {
                if code == 421 {
                    self.broken = true;
                }
                Err(SendError::Rejected(reply))
            }
        }
    }

    /// Says QUIT and closes; errors do not matter any more.
    pub async fn quit(mut self) {
        if !self.broken && self.write(b"QUIT\r\n").await.is_ok() {
            let _ = self.read_reply().await;
        }
        let _ = tokio::time::timeout(self.timeout, self.io.get_mut().shutdown()).await;
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        let out = self.io.get_mut();
        match tokio::time::timeout(self.timeout, async {
            out.write_all(bytes).await?;
            out.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_error("writing to the server failed", &e)),
            Err(_) => Err(format!("writing timed out after {:?}", self.timeout)),
        }
    }

    async fn command(&mut self, line: &str) -> Result<Reply, String> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply().await
    }

    async fn command_lines(&mut self, line: &str) -> Result<(u16, Vec<String>), String> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_lines().await
    }

    async fn read_reply(&mut self) -> Result<Reply, String> {
        let (code, lines) = self.read_lines().await?;
        Ok(Reply {
            code,
            text: lines.join(" "),
        })
    }

    /// One reply: its code and the text of each of its lines.
    async fn read_lines(&mut self) -> Result<(u16, Vec<String>), String> {
        let timeout = self.timeout;
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            let read = tokio::time::timeout(
                timeout,
                (&mut self.io)
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut line),
            )
            .await;
            match read {
                Err(_) => return Err(format!("no reply within {timeout:?}")),
                Ok(Err(e)) => return Err(io_error("reading the reply failed", &e)),
                Ok(Ok(0)) => return Err("the server closed the connection".to_string()),
                Ok(Ok(_)) => {}
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let code = text
                .get(..3)
                .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| format!("not an SMTP reply: {text:?}"))?;
            let separator = text.as_bytes().get(3).copied();
            lines.push(text.get(4..).unwrap_or("").to_string());
            match separator {
                None | Some(b' ') => return Ok((code, lines)),
                Some(b'-') if lines.len() < MAX_LINES => {}
                _ => return Err(format!("not an SMTP reply: {text:?}")),
            }
        }
    }
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    s: &Settings,
    stream: S,
) -> Result<tokio_rustls::client::TlsStream<S>, OpenError> {
    let config = s
        .tls_config
        .clone()
        .ok_or_else(|| OpenError::Unavailable("TLS is not configured".into()))?;
    let connector = TlsConnector::from(config);
    tokio::time::timeout(s.timeout, connector.connect(s.server_name.clone(), stream))
        .await
        .map_err(|_| {
            OpenError::Unavailable(format!("the TLS handshake timed out after {:?}", s.timeout))
        })?
        .map_err(|e| OpenError::Unavailable(format!("the TLS handshake failed: {e}")))
}

/// The data as sent after `354`: lines ending in CRLF (a bare LF too), a dot doubled at the
/// start of a line, and a final CRLF.
fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 8);
    let mut at_line_start = true;
    let mut previous = 0u8;
    for &b in data {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        at_line_start = b == b'\n';
        previous = b;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_dot_stuffed_with_crlf_lines() {
        assert_eq!(
            dot_stuff(b"a\r\n.b\r\n..c\r\nd"),
            b"a\r\n..b\r\n...c\r\nd\r\n"
        );
        assert_eq!(dot_stuff(b".\nx\n"), b"..\r\nx\r\n");
        assert_eq!(dot_stuff(b"mid . dot\r\n"), b"mid . dot\r\n");
    }

    #[test]
    fn replies_are_worded_as_lettre_did() {
        let r = Reply {
            code: 550,
            text: "5.1.1 Mailbox unavailable".into(),
        };
        assert_eq!(
            r.to_string(),
            "permanent error (550): 5.1.1 Mailbox unavailable"
        );
        let r = Reply {
            code: 451,
            text: "4.3.0 Try again later".into(),
        };
        assert_eq!(
            r.to_string(),
            "transient error (451): 4.3.0 Try again later"
        );
    }
}
