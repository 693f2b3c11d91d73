//! A minimal blocking HTTP/1.1 client for the tests: one request per connection,
//! `Connection: close`, `Expect: 100-continue` for large bodies. It shows exactly which bytes
//! cross the wire and adds no HTTP client stack to the tests; async tests call it through
//! [`request`] (on a blocking thread).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// How long one HTTP exchange may take. The gateway bounds every request by its own 10 s
/// deadline; the rest is slack for a loaded machine.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// [`http`] from async code, on a blocking thread.
pub async fn request(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> Result<Reply> {
    let (method, target, body) = (method.to_string(), target.to_string(), body.to_vec());
    tokio::task::spawn_blocking(move || http(addr, &method, &target, &body)).await?
}

/// An HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "status {} with a body that is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value (names are lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The JSON body, after checking the status.
    pub fn expect(self, status: u16) -> Result<Value> {
        let json = self.json()?;
        if self.status != status {
            bail!("expected status {status}, got {}: {json}", self.status);
        }
        Ok(json)
    }

    /// The error code, after checking the status and the error shape.
    pub fn error(self, status: u16) -> Result<String> {
        let json = self.expect(status)?;
        let code = json["error"]["code"].as_str().context("no error.code")?;
        if json["error"]["message"].as_str().is_none_or(str::is_empty) {
            bail!("no error.message in {json}");
        }
        Ok(code.to_string())
    }
}

/// One HTTP/1.1 request on a fresh connection. Bodies over 64 KiB are announced with
/// `Expect: 100-continue` and sent only if the server asks for them, so a server that refuses
/// a too-large body from its headers answers cleanly instead of resetting a half-sent upload.
pub fn http(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let expect = body.len() > 64 * 1024;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if expect {
        head.push_str("Expect: 100-continue\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if !expect {
        stream.write_all(body)?;
    }
    let mut buf = Vec::new();
    loop {
        let ((status, headers), rest) = read_head(&mut stream, &mut buf)?;
        if status == 100 {
            buf = rest;
            stream.write_all(body)?;
            continue;
        }
        return finish(&mut stream, status, headers, rest);
    }
}

/// One HTTP/1.1 request sent whole (head and body) before anything is read, as simple clients
/// such as Python's `urllib` do: the server must read the body to answer it readably.
pub fn send_first(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .context("sending the request")?;
    let mut buf = Vec::new();
    let ((status, headers), rest) = read_head(&mut stream, &mut buf)?;
    finish(&mut stream, status, headers, rest)
}

/// Reads the rest of a response whose head has been read.
fn finish(
    stream: &mut TcpStream,
    status: u16,
    headers: Vec<(String, String)>,
    mut body: Vec<u8>,
) -> Result<Reply> {
    stream.read_to_end(&mut body)?;
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(&body)? } else { body };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A response head: the status and the headers, names lower-cased.
type Head = (u16, Vec<(String, String)>);

/// Reads a response head; returns it and the bytes after it.
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(Head, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec())?;
            let rest = buf[end + 4..].to_vec();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().context("empty response")?;
            let status = status_line
                .split(' ')
                .nth(1)
                .context("no status")?
                .parse()?;
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            return Ok(((status, headers), rest));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end])?.trim(), 16)?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).context("short chunk")?);
        data = data.get(size + 2..).context("short chunk")?;
    }
}

/// Percent-encodes every byte but ASCII letters and digits.
pub fn enc(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (*b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Base64 of `bytes`, as the gateway's JSON carries keys and values (`key_b64`, `value_b64`).
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The keys of a scan page (`GET /v1/kv`), in order.
pub fn scan_keys(page: &Value) -> Vec<String> {
    page["records"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|x| x["key"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
