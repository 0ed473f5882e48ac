//! A minimal client of the CRI streaming server (the URL Exec and Attach return), as
//! `kubectl exec` talks to it through the apiserver: a WebSocket with the
//! `v4.channel.k8s.io` subprotocol. Every binary message starts with a channel byte: 0 stdin
//! (client to server), 1 stdout, 2 stderr, 3 the final status (a Kubernetes `Status` object in
//! JSON: `{"status":"Success"}`, or a Failure whose details carry the `ExitCode`). The server
//! closes the connection when the process (exec) or the container's output (attach) ends.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

/// The subprotocol asked for (containerd 1.6's server also knows channel.k8s.io, v2, v3 and
/// the base64 variants).
pub const PROTOCOL: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;

/// What a stream delivered so far.
#[derive(Clone, Debug, Default)]
pub struct StreamOutput {
    pub stdout: String,
    pub stderr: String,
    /// The status object from channel 3, once sent.
    pub status: Option<Value>,
    /// The server closed the stream.
    pub closed: bool,
}

impl StreamOutput {
    /// The exit code the status reports: 0 for Success, the `ExitCode` cause of a
    /// `NonZeroExitCode` failure; None without a status (or another failure).
    pub fn exit_code(&self) -> Option<i32> {
        let status = self.status.as_ref()?;
        if status["status"] == "Success" {
            return Some(0);
        }
        status["details"]["causes"].as_array()?.iter().find(|c| c["reason"] == "ExitCode")?["message"]
            .as_str()?
            .parse()
            .ok()
    }
}

/// An open stream.
pub struct Stream {
    ws: WebSocket<TcpStream>,
    /// The subprotocol the server agreed to.
    pub protocol: String,
    output: StreamOutput,
}

impl Stream {
    /// Opens the stream at `url` (`http://127.0.0.1:PORT/exec/TOKEN`).
    pub fn connect(url: &str) -> Stream {
        let ws_url = url.replacen("http://", "ws://", 1);
        let authority = ws_url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("not an http:// streaming URL: {url}"));
        let tcp = TcpStream::connect(authority).unwrap_or_else(|e| panic!("connecting to {authority}: {e}"));
        // Reads wake up regularly so that deadlines are kept.
        tcp.set_read_timeout(Some(Duration::from_millis(200))).expect("a read timeout");
        let mut request = ws_url.as_str().into_client_request().expect("a WebSocket request");
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
        let (ws, response) =
            tungstenite::client(request, tcp).unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
        let protocol =
            response.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        Stream { ws, protocol, output: StreamOutput::default() }
    }

    /// Sends `data` to the process's stdin.
    pub fn send_stdin(&mut self, data: &[u8]) {
        let mut frame = vec![STDIN];
        frame.extend_from_slice(data);
        self.ws.send(Message::binary(frame)).expect("sending stdin");
    }

    /// Reads until `done` holds for what arrived, the stream closes or `timeout` passes;
    /// returns what arrived.
    pub fn read_until(&mut self, timeout: Duration, done: impl Fn(&StreamOutput) -> bool) -> &StreamOutput {
        let deadline = Instant::now() + timeout;
        while !done(&self.output) && !self.output.closed && Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Binary(frame)) => self.take(&frame),
                Ok(Message::Close(_)) => self.output.closed = true,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => self.output.closed = true,
            }
        }
        &self.output
    }

    /// Reads until the server closes the stream (at most `timeout`).
    pub fn finish(mut self, timeout: Duration) -> StreamOutput {
        self.read_until(timeout, |_| false);
        self.output
    }

    fn take(&mut self, frame: &[u8]) {
        let Some((&channel, data)) = frame.split_first() else { return };
        let text = String::from_utf8_lossy(data);
        match channel {
            STDOUT => self.output.stdout.push_str(&text),
            STDERR => self.output.stderr.push_str(&text),
            STATUS if !data.is_empty() => {
                self.output.status =
                    Some(serde_json::from_slice(data).unwrap_or_else(|_| Value::String(text.into_owned())))
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_from_status() {
        let out = |status: Value| StreamOutput { status: Some(status), ..Default::default() };
        assert_eq!(out(serde_json::json!({"metadata": {}, "status": "Success"})).exit_code(), Some(0));
        let failure = serde_json::json!({
            "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code: exit status 3",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}
        });
        assert_eq!(out(failure).exit_code(), Some(3));
        assert_eq!(out(serde_json::json!({"status": "Failure", "reason": "InternalError"})).exit_code(), None);
        assert_eq!(StreamOutput::default().exit_code(), None);
    }
}
