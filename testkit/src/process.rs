//! A server process a test owns, and the slot that keeps it.
//!
//! Every server testkit runs as a child process (the JVM servers, FerretDB)
//! goes through the same motions: spawn it with its output appended to a log
//! file in its scratch directory, wait until it is ready (or panic with the
//! log's tail when it exits or takes too long), report its pid and log,
//! stop it gracefully (and start it again on the same ports and data), kill
//! it, and never leave it running when its handle is dropped. Those motions
//! live here, once; each server's file keeps only what is its own: its
//! command line, its configuration and its readiness probe.
//!
//! A process holds a pipe to the child's standard input for as long as it
//! lives. The child treats end-of-file there as its owner's death (the JVM
//! launcher's watchdog, FerretDB's shell wrapper), so no server outlives the
//! test process, however that process ends.

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::scratch_dir;

/// How a server process is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// By signals: SIGTERM for a graceful stop (the server's shutdown hooks
    /// run), SIGKILL when it must end at once. The JVM servers.
    Signals,
    /// By closing its standard input: a wrapper then ends the server
    /// (FerretDB's `sh` wrapper sends it SIGTERM and waits). A signal to the
    /// wrapper would orphan the server, so every ending closes the pipe.
    StdinClosed,
}

/// A running server process, its stdout and stderr appended to a log file.
/// Ended (see [`Ending`]) on drop.
pub struct ServerProcess {
    name: String,
    child: Child,
    /// Held open: the server ends when it is closed.
    stdin: Option<ChildStdin>,
    ending: Ending,
    log: PathBuf,
    /// Where this run's output starts in the log (the log is appended to).
    log_start: u64,
}

impl ServerProcess {
    /// Spawns `cmd` with a pipe on its standard input and its output
    /// appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, ending: Ending) -> ServerProcess {
        let file =
            std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let log_start = file.metadata().map(|m| m.len()).unwrap_or(0);
        let file2 = file.try_clone().expect("clone log handle");
        cmd.stdin(Stdio::piped()).stdout(file).stderr(file2);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {:?} for {name}: {e}", cmd.get_program()));
        let stdin = child.stdin.take();
        ServerProcess { name: name.to_string(), child, stdin, ending, log: log.to_path_buf(), log_start }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// This run's output so far.
    pub fn output(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            if f.seek(SeekFrom::Start(self.log_start)).is_ok() {
                let _ = f.read_to_string(&mut s);
            }
        }
        s
    }

    /// Waits until `127.0.0.1:<port>` accepts connections and this run's
    /// output contains `needle`; panics with the log's tail if the process
    /// exits or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration, port: u16, needle: &str) {
        let what = format!("{needle:?} and port {port}");
        self.wait_until(timeout, &what, |out| out.contains(needle) && TcpStream::connect(("127.0.0.1", port)).is_ok());
    }

    /// Waits until `ready` (given this run's output so far) returns true;
    /// panics with the log's tail if the process exits or `timeout` passes
    /// (the process is then ended).
    pub fn wait_until(&mut self, timeout: Duration, what: &str, mut ready: impl FnMut(&str) -> bool) {
        let start = Instant::now();
        loop {
            if ready(&self.output()) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before it was ready (waiting for {what}):\n{}", self.name, tail(&self.log, 60));
            }
            if start.elapsed() > timeout {
                self.kill();
                panic!("{} not ready after {timeout:?} (waiting for {what}):\n{}", self.name, tail(&self.log, 60));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Graceful stop: SIGTERM (the server's shutdown hooks run), then SIGKILL
    /// if it has not exited within `grace`; with [`Ending::StdinClosed`],
    /// closes the pipe and waits. Returns true if it exited by itself.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        if self.ending == Ending::StdinClosed {
            self.kill();
            return true;
        }
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).stdin(Stdio::null()).status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.stdin = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        false
    }

    /// Ends the process now and waits for it: SIGKILL, or with
    /// [`Ending::StdinClosed`] closing the pipe.
    pub fn kill(&mut self) {
        if self.ending == Ending::Signals {
            let _ = self.child.kill();
        }
        self.stdin = None;
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where one server lives: its scratch directory (removed with the slot),
/// its log file in there (appended to by every run), the port it serves
/// clients on, and its process while it runs. Start, stop, kill, pid and
/// log are the slot's; the process is ended when the slot is dropped, before
/// the directory goes.
pub struct ServerSlot {
    name: &'static str,
    port: u16,
    child: Mutex<Option<ServerProcess>>,
    dir: tempfile::TempDir,
}

/// A server a test runs in a [`ServerSlot`] (the JVM servers, FerretDB):
/// starting it again, stopping, killing, its pid and its log come with the
/// slot. `use testkit::Server` to call them.
pub trait Server {
    /// Where the server lives.
    fn slot(&self) -> &ServerSlot;

    /// Starts (or restarts after [`stop`](Self::stop)) the server on the
    /// same ports and data, and waits until it serves clients.
    fn start_server(&self);

    /// The server, started (see [`start_server`](Self::start_server)).
    fn started(self) -> Self
    where
        Self: Sized,
    {
        self.start_server();
        self
    }

    /// Stops the server gracefully (SIGTERM: its shutdown hooks flush and
    /// close; SIGKILL after 60 s) and waits until its port is closed. The
    /// data stays for [`start_server`](Self::start_server).
    fn stop(&self) {
        self.slot().stop();
    }

    /// Kills the server at once (SIGKILL, no shutdown): what it acknowledged
    /// is in its log on disk (or the OS page cache) and recovered on the
    /// next start.
    fn kill(&self) {
        self.slot().kill();
    }

    /// The server's process id while it runs.
    fn pid(&self) -> Option<u32> {
        self.slot().pid()
    }

    /// The server's log so far, all runs (for failure messages).
    fn log(&self) -> String {
        self.slot().log()
    }
}

impl ServerSlot {
    /// An empty slot for the server `name` serving on `port`: a new scratch
    /// directory `pgfanout-<name>-*`, the log `<name>.log` in it.
    pub fn new(name: &'static str, port: u16) -> ServerSlot {
        ServerSlot { name, port, child: Mutex::new(None), dir: scratch_dir(&format!("pgfanout-{name}-")) }
    }

    /// The port the server serves clients on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log file every run appends to.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.name))
    }

    /// Spawns `cmd` as this slot's server (see [`ServerProcess::spawn`]).
    pub fn spawn(&self, cmd: Command, ending: Ending) -> ServerProcess {
        ServerProcess::spawn(self.name, cmd, &self.log_file(), ending)
    }

    /// Starts the server unless it runs: `launch` spawns it and waits until
    /// it is ready (panicking otherwise); the slot then keeps the process.
    /// A restart binds the same ports again: a moment's clash with another
    /// test picking a free port is retried ([`crate::retry_on_port_clash`]).
    pub fn start(&self, mut launch: impl FnMut() -> ServerProcess) {
        let mut child = self.process();
        if child.is_none() {
            *child = Some(crate::retry_on_port_clash(&mut launch));
        }
    }

    /// Stops the server gracefully (see [`ServerProcess::terminate`]; SIGKILL
    /// after 60 s) and waits until nothing listens on its port. The directory
    /// stays, for a restart with [`start`](Self::start).
    pub fn stop(&self) {
        let running = self.process().take();
        if let Some(mut p) = running {
            p.terminate(Duration::from_secs(60));
        }
        wait_port_closed(self.port, Duration::from_secs(10));
    }

    /// Kills the server at once (no shutdown) and waits until nothing
    /// listens on its port.
    pub fn kill(&self) {
        let running = self.process().take();
        if let Some(mut p) = running {
            p.kill();
        }
        wait_port_closed(self.port, Duration::from_secs(10));
    }

    /// The process id while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.process().as_ref().map(ServerProcess::pid)
    }

    /// The log so far, all runs (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    fn process(&self) -> MutexGuard<'_, Option<ServerProcess>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ServerSlot {
    fn drop(&mut self) {
        let running = self.process().take();
        drop(running);
    }
}

/// The one `T` of the whole test binary, made by `make` on first use (the
/// `shared()` servers: tests of one binary share them, with names of their
/// own). Never dropped, as a `static` is not: a shared server ends with the
/// test process, by the watchdog on its standard input.
pub fn shared<T: Any + Send + Sync>(make: impl FnOnce() -> T) -> &'static T {
    type Cells = BTreeMap<TypeId, &'static (dyn Any + Send + Sync)>;
    static CELLS: Mutex<Cells> = Mutex::new(BTreeMap::new());
    let cell = {
        let mut cells = CELLS.lock().unwrap_or_else(|e| e.into_inner());
        let any = *cells.entry(TypeId::of::<T>()).or_insert_with(|| Box::leak(Box::new(OnceLock::<T>::new())));
        any.downcast_ref::<OnceLock<T>>().expect("a cell of its own type")
    };
    // made outside the lock: servers of other types start meanwhile
    cell.get_or_init(make)
}

/// Waits (up to `timeout`) until nothing accepts connections on the port.
pub fn wait_port_closed(port: u16, timeout: Duration) {
    crate::wait_until(timeout, "the port to close", || TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// The last `n` lines of a file (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
