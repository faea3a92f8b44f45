//! Threads and processes inside a topology's namespaces: [`Topology::run_in`] and
//! [`Topology::spawn`] with their variants, and [`NsChild`], a spawned process whose output is
//! collected and whose process group is killed when it is dropped.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::{lock, netns::enter_netns, Enter, Registry, SpawnOpts, Topology};

impl Topology {
    /// Runs `f` on a fresh thread that entered `ns` with `setns(2)`; sockets `f` creates
    /// live in `ns`. The thread ends with `f`, so no other code ever runs in the namespace
    /// by accident (a network namespace belongs to a thread, not the process).
    pub fn run_in<R: Send>(&self, ns: &str, f: impl FnOnce() -> R + Send) -> Result<R> {
        self.check_ours(ns)?;
        let path = Self::netns_path(ns);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                enter_netns(&file, &path)?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("thread running in {ns} panicked"))?
        })
    }

    /// Like [`Topology::run_in`] but in the background: for in-process servers. Join the
    /// handle (after stopping what `f` runs) before the topology drops.
    pub fn spawn_thread_in<R: Send + 'static>(
        &self,
        ns: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<JoinHandle<Result<R>>> {
        self.check_ours(ns)?;
        let path = Self::netns_path(ns);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(std::thread::spawn(move || {
            enter_netns(&file, &path)?;
            Ok(f())
        }))
    }

    // --- processes ---------------------------------------------------------------------------

    /// Runs `cmd` in `ns` via `ip netns exec` and returns its output, whatever the exit status.
    pub fn exec(&self, ns: &str, cmd: &[&str]) -> Result<Output> {
        self.check_ours(ns)?;
        ensure!(!cmd.is_empty(), "exec in {ns}: empty command");
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(cmd).stdin(Stdio::null());
        let _procs = match self.default_cgroup(ns)? {
            Some(cg) => Some(join_cgroup(&mut c, &cg)?),
            None => None,
        };
        c.output()
            .with_context(|| format!("running {cmd:?} in {ns}"))
    }

    /// Like [`Topology::exec`] but fails on a non-zero exit (with stderr in the error);
    /// returns stdout.
    pub fn exec_ok(&self, ns: &str, cmd: &[&str]) -> Result<String> {
        let out = self.exec(ns, cmd)?;
        ensure!(
            out.status.success(),
            "{cmd:?} in {ns} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8(out.stdout).with_context(|| format!("stdout of {cmd:?} in {ns}"))
    }

    /// Starts `cmd` in `ns` via `ip netns exec`. See [`NsChild`].
    pub fn spawn(&self, ns: &str, cmd: &[&str]) -> Result<NsChild> {
        self.spawn_opts(ns, cmd, &SpawnOpts::default())
    }

    /// Starts `svc-probe serve --id POD ARGS…` in each pod of `pods` (e.g. `args` =
    /// `["--tcp", "8080"]`) and waits until each says it is ready.
    pub fn serve(&self, pods: &[&str], args: &[&str]) -> Result<Vec<NsChild>> {
        let probe = crate::agent::workspace_bin("svc-probe")?;
        let probe = probe.to_str().context("svc-probe path is not UTF-8")?;
        let mut servers = Vec::new();
        for pod in pods {
            let mut cmd = vec![probe, "serve", "--id", pod];
            cmd.extend_from_slice(args);
            let mut s = self
                .spawn(self.pod_ns(pod), &cmd)
                .with_context(|| format!("starting a server in {pod}"))?;
            s.wait_for_line(Duration::from_secs(5), |l| l == "ready")
                .with_context(|| format!("server in {pod} ready"))?;
            servers.push(s);
        }
        Ok(servers)
    }

    /// Starts `cmd` in `ns` via `nsenter --net=/run/netns/NS` (the agent: keeps bpffs visible).
    pub fn spawn_nsenter(&self, ns: &str, cmd: &[&str]) -> Result<NsChild> {
        self.spawn_opts(
            ns,
            cmd,
            &SpawnOpts {
                enter: Enter::Nsenter,
                ..SpawnOpts::default()
            },
        )
    }

    /// Starts `cmd` in `ns` in its own process group, with stdout (and unless told otherwise
    /// stderr) captured. The topology kills the group when it drops if the caller has not
    /// reaped the process by then.
    pub fn spawn_opts(&self, ns: &str, cmd: &[&str], opts: &SpawnOpts) -> Result<NsChild> {
        self.check_ours(ns)?;
        ensure!(!cmd.is_empty(), "spawn in {ns}: empty command");
        let mut c = match opts.enter {
            // Both exec the command in place (no fork), so the pid we get is the command's.
            Enter::IpNetnsExec => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                c
            }
            Enter::Nsenter => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", Self::netns_path(ns).display()));
                c
            }
        };
        c.args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if opts.inherit_stderr {
                Stdio::inherit()
            } else {
                Stdio::piped()
            })
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            // Own group: one kill(-pgid) also reaches anything the command forks.
            .process_group(0);
        let cgroup = match &opts.cgroup {
            Some(cg) => Some(cg.clone()),
            None => self.default_cgroup(ns)?,
        };
        let _procs = match &cgroup {
            Some(cg) => Some(join_cgroup(&mut c, cg)?),
            None => None,
        };
        let what = format!("{cmd:?} in {ns}");
        // Register under the lock so a concurrent drop cannot miss the new child.
        let mut reg = lock(&self.children);
        let mut child = c.spawn().with_context(|| format!("spawning {what}"))?;
        reg.insert(child.id());
        drop(reg);
        Ok(NsChild::new(&mut child, what, self.children.clone()).attach(child))
    }
}

/// What a finished [`NsChild`] left.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// All stdout lines (including any consumed by [`NsChild::wait_for_line`]).
    pub stdout: String,
    /// Captured stderr (empty when inherited).
    pub stderr: String,
}

/// A process running in a namespace. stdout is read by a thread into lines (so
/// [`NsChild::wait_for_line`] can wait for "ready" with a deadline); stderr is collected
/// (tail kept) for error messages. Dropping it kills the process group and reaps it.
pub struct NsChild {
    child: Option<Child>,
    what: String,
    pid: u32,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stdout_thread: Option<JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
    registry: Registry,
}

/// How long [`NsChild::finish`] waits for the output pipes to close after the process exited.
const PIPE_DRAIN: Duration = Duration::from_secs(2);
/// Captured stderr keeps at most this much (the tail: the end of a log explains a failure).
const STDERR_CAP: usize = 256 * 1024;

impl NsChild {
    fn new(child: &mut Child, what: String, registry: Registry) -> NsChild {
        let (tx, rx) = mpsc::channel();
        let stdout_thread = child.stdout.take().map(|out| {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_thread = child.stderr.take().map(|mut err| {
            let buf = stderr.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = err.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let mut b = lock(&buf);
                    b.push_str(&String::from_utf8_lossy(&chunk[..n]));
                    if b.len() > STDERR_CAP {
                        let mut cut = b.len() - STDERR_CAP / 2;
                        while !b.is_char_boundary(cut) {
                            cut += 1;
                        }
                        b.drain(..cut);
                    }
                }
            })
        });
        NsChild {
            child: None,
            pid: child.id(),
            what,
            lines: rx,
            stdout: Vec::new(),
            stdout_thread,
            stderr,
            stderr_thread,
            registry,
        }
    }

    fn attach(mut self, child: Child) -> NsChild {
        self.child = Some(child);
        self
    }

    /// Process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Captured stderr so far.
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// stdout lines received so far.
    pub fn stdout_lines(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.stdout.push(l);
        }
        &self.stdout
    }

    /// Waits until a stdout line satisfies `pred` (e.g. `|l| l == "ready"`) and returns it.
    /// Fails at the deadline, or early if the process exits, with its stderr in the error.
    pub fn wait_for_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(l) => {
                    self.stdout.push(l.clone());
                    if pred(&l) {
                        return Ok(l);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_timeout(Duration::from_secs(2)).ok();
                    bail!(
                        "{} closed stdout (exit {status:?}) before the expected line; stderr: {}",
                        self.what,
                        self.stderr().trim()
                    );
                }
                Err(RecvTimeoutError::Timeout) if left.is_zero() => bail!(
                    "{}: expected line not seen within {timeout:?}; stdout: {:?}; stderr: {}",
                    self.what,
                    self.stdout,
                    self.stderr().trim()
                ),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Sends `sig` to the process group (e.g. `libc::SIGTERM` to stop `svc-probe hold` or the
    /// agent cleanly).
    pub fn signal(&self, sig: i32) -> Result<()> {
        // Under the lock: the pid is in the registry only while nobody has reaped it, so the
        // group id cannot belong to an unrelated process.
        let reg = lock(&self.registry);
        if self.child.is_none() || !reg.contains(&self.pid) {
            bail!("{}: already reaped", self.what);
        }
        // SAFETY: plain syscall; the group leader is our unreaped child (checked above).
        if unsafe { libc::kill(-(self.pid as i32), sig) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("signal {sig} to {}", self.what));
        }
        Ok(())
    }

    /// Polls for exit until `timeout`; reaps and unregisters the process when it exited.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self
            .child
            .as_mut()
            .with_context(|| format!("{}: already reaped", self.what))?;
        let mut step = Duration::from_millis(1);
        loop {
            // Unregister before reaping: once reaped, the pid may be reused and must not be
            // killed by the topology's drop.
            let mut reg = lock(&self.registry);
            match child.try_wait() {
                Ok(Some(status)) => {
                    reg.remove(&self.pid);
                    drop(reg);
                    self.child = None;
                    return Ok(status);
                }
                Ok(None) => {}
                Err(e) => {
                    // ECHILD: the topology's drop reaped it already.
                    reg.remove(&self.pid);
                    self.child = None;
                    return Err(e).with_context(|| format!("waiting for {}", self.what));
                }
            }
            drop(reg);
            if Instant::now() >= deadline {
                bail!(
                    "{} still running after {timeout:?}; stderr: {}",
                    self.what,
                    self.stderr().trim()
                );
            }
            std::thread::sleep(step.min(deadline.saturating_duration_since(Instant::now())));
            step = (step * 2).min(Duration::from_millis(50));
        }
    }

    /// Waits for exit (up to `timeout`, then kills) and returns status and all output.
    pub fn finish(mut self, timeout: Duration) -> Result<Finished> {
        let status = match self.wait_timeout(timeout) {
            Ok(s) => s,
            Err(e) => {
                self.kill();
                return Err(e);
            }
        };
        Ok(self.collect(status))
    }

    /// SIGTERM, then wait up to `timeout` (then SIGKILL); returns status and all output.
    pub fn terminate(self, timeout: Duration) -> Result<Finished> {
        self.signal(libc::SIGTERM)?;
        self.finish(timeout)
    }

    fn collect(&mut self, status: ExitStatus) -> Finished {
        // The pipes reach EOF when the last holder exits; join the readers so no line is lost.
        // A background grandchild may keep a pipe open indefinitely, so wait a bounded time
        // and then leave the reader detached rather than hang the test.
        let deadline = Instant::now() + PIPE_DRAIN;
        for t in [self.stdout_thread.take(), self.stderr_thread.take()]
            .into_iter()
            .flatten()
        {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                eprintln!(
                    "{}: output pipe still open after exit; not waiting",
                    self.what
                );
            }
        }
        while let Ok(l) = self.lines.try_recv() {
            self.stdout.push(l);
        }
        let mut stdout = self.stdout.join("\n");
        stdout.push('\n');
        Finished {
            status,
            stdout,
            stderr: self.stderr(),
        }
    }

    /// SIGKILLs the process group and reaps the process.
    pub fn kill(&mut self) {
        if self.child.is_some() {
            let _ = self.signal(libc::SIGKILL);
            let _ = self.wait_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes `c` join the cgroup v2 directory `cg` between fork and exec, so the process never runs
/// outside it. Returns the open `cgroup.procs`, which must live until `c` is spawned.
fn join_cgroup(c: &mut Command, cg: &std::path::Path) -> Result<File> {
    let p = cg.join("cgroup.procs");
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    let fd = procs.as_raw_fd();
    // SAFETY: the closure runs between fork and exec and only calls write(2), which is
    // async-signal-safe; `fd` stays open in the child until exec (it is CLOEXEC).
    // Writing "0" to cgroup.procs moves the writing process (cgroup v2).
    unsafe {
        c.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(procs)
}
