//! A small client of QEMU's machine protocol (QMP) over one end of a socket pair whose other
//! end QEMU inherits: `cont`, `stop`, `quit`, and the `SHUTDOWN` event that says the guest
//! powered off or rebooted. No socket has a name, so none can be left behind or reached by
//! another process.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a command may wait for QEMU's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What QEMU said without being asked.
#[derive(Debug, Default)]
pub struct Events {
    /// The guest shut down (powered off, or rebooted under `-action reboot=shutdown`).
    pub shutdown: AtomicBool,
    /// The connection ended: QEMU exited or closed it.
    pub closed: AtomicBool,
}

/// A QMP connection, capabilities negotiated.
pub struct Qmp {
    stream: Mutex<UnixStream>,
    replies: Mutex<Receiver<Result<Value, String>>>,
    /// Events seen so far.
    pub events: Arc<Events>,
}

impl Qmp {
    /// Speaks QMP over `stream`, the end of the pair that QEMU did not inherit, and
    /// negotiates capabilities. If QEMU dies first, its end closes and this fails at once.
    pub fn over(stream: UnixStream) -> Result<Qmp, String> {
        let reader = stream.try_clone().map_err(|e| format!("QMP socket: {e}"))?;
        let events = Arc::new(Events::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let ev = events.clone();
        std::thread::Builder::new()
            .name("qmp".into())
            .spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                    if let Some(name) = v.get("event").and_then(Value::as_str) {
                        if name == "SHUTDOWN" {
                            ev.shutdown.store(true, Ordering::Release);
                        }
                    } else if let Some(r) = v.get("return") {
                        let _ = tx.send(Ok(r.clone()));
                    } else if let Some(e) = v.get("error") {
                        let _ = tx.send(Err(e.get("desc").and_then(Value::as_str).unwrap_or("error").to_string()));
                    }
                    // The greeting ({"QMP": …}) needs no answer.
                }
                ev.closed.store(true, Ordering::Release);
            })
            .map_err(|e| format!("cannot start the QMP reader: {e}"))?;
        let qmp = Qmp { stream: Mutex::new(stream), replies: Mutex::new(rx), events };
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    /// Runs a command without arguments and returns its answer.
    pub fn execute(&self, command: &str) -> Result<Value, String> {
        let replies = self.replies.lock().unwrap_or_else(|e| e.into_inner());
        let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        stream
            .write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes())
            .map_err(|e| format!("QMP {command}: {e}"))?;
        drop(stream);
        match replies.recv_timeout(REPLY_TIMEOUT) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("QMP {command}: {e}")),
            Err(RecvTimeoutError::Timeout) => Err(format!("QMP {command}: no answer in {REPLY_TIMEOUT:?}")),
            Err(RecvTimeoutError::Disconnected) => Err(format!("QMP {command}: QEMU closed the connection")),
        }
    }
}
