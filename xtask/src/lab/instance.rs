//! One lab (one hypervisor flavour): its state on disk, booting, reuse and teardown.
//!
//! A lab lives in `target/xenlab/<flavour>/`: `lab.json` (the running QEMU's
//! pid and ports), `serial.log` (Xen's and dom0's console), `qmp.sock`,
//! `consoles/` (guest consoles) and `lock`. Every command that boots, reuses or
//! stops a lab holds `lock` (flock) meanwhile, so two commands never boot the
//! same lab twice; a lab whose QEMU died, or stopped answering, is cleaned up
//! by the next command.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::client::Agent;
use super::image::{self, AGENT_PORT};
use super::qemu::{self, Accel, Machine};
use super::qmp::Qmp;
use super::saved::{self, Lookup, SavedStates};
use super::xen::{self, Flavour};
use crate::ws;

/// What `lab.json` records about a running lab.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct State {
    pub pid: i32,
    pub agent_port: u16,
    /// Host port on 127.0.0.1 forwarded to `forward_guest` in dom0.
    pub forward_host: u16,
    pub forward_guest: u16,
    pub accel: Accel,
    /// Seconds from QEMU's start to a dom0 that runs commands.
    pub boot_secs: f64,
    /// Unix time of the boot.
    pub started: u64,
}

/// Options for starting a lab.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// Host port to forward (None: pick a free one) and the dom0 port it reaches.
    pub forward: (Option<u16>, u16),
    /// How long to wait for dom0.
    pub timeout: Duration,
    /// Boot cold even if a saved state exists (and save a fresh one).
    pub cold: bool,
    /// Use and keep saved states (`XENPROBE_LAB_SAVE=0` turns them off).
    pub saved_states: bool,
}

/// A lab directory for one flavour.
pub struct Lab {
    pub flavour: Flavour,
    pub dir: PathBuf,
}

/// A lab that answers.
pub struct Running {
    pub state: State,
    pub agent: Agent,
}

impl Lab {
    pub fn new(flavour: Flavour) -> Self {
        Lab::at(flavour, ws::instance_dir(flavour.name()))
    }

    /// A lab of `flavour` kept in `dir`.
    pub fn at(flavour: Flavour, dir: PathBuf) -> Self {
        Lab { flavour, dir }
    }

    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }

    pub fn consoles(&self) -> PathBuf {
        self.dir.join("consoles")
    }

    fn state_file(&self) -> PathBuf {
        self.dir.join("lab.json")
    }

    fn read_state(&self) -> Option<State> {
        let text = std::fs::read_to_string(self.state_file()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Holds the lab's lock until the guard is dropped.
    fn lock(&self) -> Result<Lock> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let f = File::create(self.dir.join("lock"))?;
        crate::sys::flock_exclusive(&f, true)
            .with_context(|| format!("locking {}", self.dir.display()))?;
        Ok(Lock(f))
    }

    /// The running lab, if its QEMU is alive and its agent answers.
    pub fn running(&self) -> Option<Running> {
        let state = self.read_state()?;
        if !self.qemu_alive(state.pid) {
            return None;
        }
        let agent = Agent::on_port(state.agent_port);
        agent
            .ping(Duration::from_secs(5))
            .then_some(Running { state, agent })
    }

    /// Whether `pid` is this lab's QEMU (not a process that reused the pid).
    pub(crate) fn qemu_alive(&self, pid: i32) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        cmdline.contains("qemu-system") && cmdline.contains(&*self.serial_log().to_string_lossy())
    }

    /// Returns the running lab, booting one if there is none (and cleaning up
    /// one that died or hangs).
    pub fn up(&self, opts: &UpOptions) -> Result<Running> {
        let _lock = self.lock()?;
        if let Some(r) = self.running() {
            if let Some(want) = opts.forward.0 {
                if want != r.state.forward_host || opts.forward.1 != r.state.forward_guest {
                    eprintln!(
                        "lab: note: the running {} lab forwards 127.0.0.1:{} -> dom0:{}; \
                         run `cargo xtask lab down` first to change it",
                        self.flavour.name(),
                        r.state.forward_host,
                        r.state.forward_guest
                    );
                }
            }
            return Ok(r);
        }
        self.clean_stale()?;
        self.boot(opts)
    }

    /// Removes what a dead or hung lab left behind.
    fn clean_stale(&self) -> Result<()> {
        if let Some(state) = self.read_state() {
            if self.qemu_alive(state.pid) {
                eprintln!(
                    "lab: the {} lab (QEMU pid {}) does not answer; stopping it",
                    self.flavour.name(),
                    state.pid
                );
                kill_and_wait(state.pid);
            } else {
                eprintln!(
                    "lab: cleaning up after a {} lab that is gone (QEMU pid {})",
                    self.flavour.name(),
                    state.pid
                );
            }
        }
        for f in ["lab.json", "qmp.sock", "qemu.pid"] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        Ok(())
    }

    fn boot(&self, opts: &UpOptions) -> Result<Running> {
        crate::deps::ensure(crate::deps::Need::Lab)?;
        let agent_bin = build_agent()?;
        let xen = xen::hypervisor(self.flavour, &ws::lab_dir().join("xen"))?;
        // One dom0 image per Xen userland: the machine's, or a foreign release's.
        let dom0_dir = match self.flavour.foreign_release() {
            None => ws::lab_dir().join("dom0"),
            Some(v) => ws::lab_dir().join(format!("dom0-{v}")),
        };
        let dom0 = image::build(&dom0_dir, &agent_bin, &self.flavour.root()?)?;
        tracing::debug!(hypervisor = %xen.id, dom0 = %dom0.id, "lab images");
        let (accel, why) = qemu::choose_accel(&ws::lab_dir());
        match self.boot_with(accel, &why, &xen, &dom0, opts) {
            Ok(r) => Ok(r),
            Err(e) if accel == Accel::Kvm => {
                eprintln!(
                    "lab: KVM could not boot the lab ({e:#}); falling back to software emulation"
                );
                std::fs::write(qemu::kvm_failed_marker(&ws::lab_dir()), format!("{e:#}\n"))?;
                self.boot_with(
                    Accel::Tcg,
                    "software emulation: KVM failed",
                    &xen,
                    &dom0,
                    opts,
                )
            }
            Err(e) => Err(e),
        }
    }

    fn boot_with(
        &self,
        accel: Accel,
        why: &str,
        xen: &xen::XenImage,
        dom0: &image::Dom0,
        opts: &UpOptions,
    ) -> Result<Running> {
        let forward_host = match opts.forward.0 {
            Some(p) => p,
            None => free_port()?,
        };
        let forward_guest = opts.forward.1;
        std::fs::create_dir_all(self.consoles())?;
        // Eager FPU switching: with Xen's lazy switching (its default on the
        // AMD CPU QEMU emulates) dom0 processes lost SSE register contents
        // under emulation, which read as memory corruption (docs/lab.md, "The
        // lab's CPU configuration"; tests/live_lab.rs checks it). One dom0
        // vCPU: measured faster here than two.
        let mut xen_cmdline = String::from(
            "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=1 \
             spec-ctrl=eager-fpu console_timestamps=boot noreboot",
        );
        // An empty or blank value counts as unset (and keeps the saved state).
        if let Ok(extra) = std::env::var("XENPROBE_XEN_CMDLINE") {
            if !extra.trim().is_empty() {
                xen_cmdline = format!("{xen_cmdline} {}", extra.trim());
            }
        }
        let root = ws::root();
        let serial = self.serial_log();
        let qmp_sock = self.dir.join("qmp.sock");
        let pid_file = self.dir.join("qemu.pid");
        let mut m = Machine {
            accel,
            xen_elf: &xen.elf,
            xen_cmdline: &xen_cmdline,
            dom0_kernel: &dom0.kernel,
            dom0_cmdline: "console=hvc0 earlyprintk=xen quiet",
            initramfs: &dom0.initramfs,
            share: &root,
            serial_log: &serial,
            qmp_socket: &qmp_sock,
            pid_file: &pid_file,
            agent: (free_port()?, AGENT_PORT),
            forward: (forward_host, forward_guest),
            memory: "3G",
            cpus: cpus(),
            incoming: None,
        };
        // Everything that makes a saved state invalid.
        let inputs = vec![
            qemu::version()?,
            m.key_text(),
            format!("xen {}", xen.id),
            format!("dom0 {}", dom0.id),
        ];
        let key = saved::key(&inputs);
        let states = SavedStates::new(ws::lab_dir().join("states"));
        let flavour = self.flavour.name();
        let save = opts.saved_states;

        let t0 = Instant::now();
        if save && !opts.cold {
            match states.lookup(flavour, &key) {
                Lookup::Found(state) => {
                    m.incoming = Some(saved::incoming_uri(&state));
                    match self.start(&m, opts.timeout) {
                        Ok((pid, agent)) => {
                            return self.finish(
                                pid,
                                agent,
                                &m,
                                t0,
                                "restored from its saved state",
                            );
                        }
                        Err(e) => {
                            eprintln!(
                                "lab: the saved state could not be restored ({e:#}); \
                                 deleting it and booting cold"
                            );
                            states.remove(flavour, &key);
                        }
                    }
                    m.incoming = None;
                }
                Lookup::Damaged(why) => {
                    eprintln!("lab: the saved state is damaged ({why}); deleted; booting cold")
                }
                Lookup::Missing => {}
            }
        }
        eprintln!(
            "lab: cold boot of the {flavour} hypervisor under QEMU ({}: {why})",
            accel.name()
        );
        let t0 = Instant::now();
        let (pid, agent) = self.start(&m, opts.timeout)?;
        let how = if save {
            let t1 = Instant::now();
            let mut qmp = Qmp::connect(&qmp_sock, Duration::from_secs(10))?;
            match states.save(&mut qmp, flavour, &key, &inputs) {
                Ok(()) => format!(
                    "cold boot; state saved for the next start in {:.1} s",
                    t1.elapsed().as_secs_f64()
                ),
                Err(e) => format!("cold boot; saving its state failed: {e:#}"),
            }
        } else {
            "cold boot".to_string()
        };
        self.finish(pid, agent, &m, t0, &how)
    }

    /// Starts QEMU (restoring `m.incoming` if set) and waits for the agent.
    fn start(&self, m: &Machine, timeout: Duration) -> Result<(i32, Agent)> {
        let _ = std::fs::remove_file(m.pid_file);
        let _ = std::fs::remove_file(m.qmp_socket);
        let t0 = Instant::now();
        let out = m
            .command()?
            .stdin(std::process::Stdio::null())
            .output()
            .context("starting QEMU")?;
        if !out.status.success() {
            bail!(
                "QEMU failed to start ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let pid: i32 = std::fs::read_to_string(m.pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .context("QEMU wrote no pid file")?;
        if m.incoming.is_some() {
            let resumed = Qmp::connect(m.qmp_socket, Duration::from_secs(10)).and_then(|mut q| {
                q.wait_migration(timeout)?;
                q.execute("cont", serde_json::json!({}))?;
                Ok(())
            });
            if let Err(e) = resumed {
                kill_and_wait(pid);
                return Err(e);
            }
        }
        let agent = Agent::on_port(m.agent.0);
        loop {
            if agent.ping(Duration::from_millis(500)) {
                return Ok((pid, agent));
            }
            if !self.qemu_alive(pid) {
                bail!(
                    "QEMU exited while booting Xen; last serial lines ({}):\n{}",
                    m.serial_log.display(),
                    tail(m.serial_log, 50)
                );
            }
            if t0.elapsed() > timeout {
                kill_and_wait(pid);
                bail!(
                    "Xen/dom0 did not come up within {} s; last serial lines ({}):\n{}",
                    timeout.as_secs(),
                    m.serial_log.display(),
                    tail(m.serial_log, 50)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Mounts the workspace in dom0, records the lab's state and reports.
    fn finish(
        &self,
        pid: i32,
        agent: Agent,
        m: &Machine,
        t0: Instant,
        how: &str,
    ) -> Result<Running> {
        let root = ws::root();
        let attach = agent.output(&[
            "xenlab-attach",
            &root.to_string_lossy(),
            &self.consoles().to_string_lossy(),
        ])?;
        if attach.code != 0 {
            kill_and_wait(pid);
            bail!(
                "dom0 could not mount the workspace: {}",
                String::from_utf8_lossy(&attach.stderr).trim()
            );
        }
        let boot_secs = t0.elapsed().as_secs_f64();
        let info = agent.output(&["xl", "info"])?;
        let caps = String::from_utf8_lossy(&info.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("virt_caps"))
            .map(|l| l.trim_start_matches([' ', ':']).to_string())
            .unwrap_or_else(|| "unknown (xl info failed)".into());
        let state = State {
            pid,
            agent_port: m.agent.0,
            forward_host: m.forward.0,
            forward_guest: m.forward.1,
            accel: m.accel,
            boot_secs,
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        std::fs::write(self.state_file(), serde_json::to_string_pretty(&state)?)?;
        eprintln!(
            "lab: {} lab ready in {boot_secs:.1} s ({how}); virt_caps: {caps}; \
             127.0.0.1:{} -> dom0:{}",
            self.flavour.name(),
            m.forward.0,
            m.forward.1
        );
        Ok(Running { state, agent })
    }

    /// Stops the lab; returns whether one was running.
    pub fn down(&self) -> Result<bool> {
        let _lock = self.lock()?;
        let was = match self.read_state() {
            Some(s) if self.qemu_alive(s.pid) => {
                kill_and_wait(s.pid);
                true
            }
            _ => false,
        };
        for f in ["lab.json", "qmp.sock", "qemu.pid"] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        Ok(was)
    }
}

struct Lock(#[allow(dead_code)] File);

/// Builds the dom0 agent (release, small) and returns its path.
fn build_agent() -> Result<PathBuf> {
    let root = ws::root();
    let target = root.join("target/xtask");
    let st = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "xenlab-agent",
            "--target-dir",
        ])
        .arg(&target)
        .status()
        .context("running cargo to build the lab agent")?;
    if !st.success() {
        bail!("building the lab agent (xtask/agent) failed");
    }
    Ok(target.join("release/xenlab-agent"))
}

/// A TCP port on 127.0.0.1 that is free right now.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// SIGTERM, then SIGKILL after 3 s; waits until the process is gone.
fn kill_and_wait(pid: i32) {
    let alive = || Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid);
    // A pid we checked belongs to our QEMU.
    crate::sys::kill(pid, libc::SIGTERM);
    let t0 = Instant::now();
    while alive() {
        if t0.elapsed() > Duration::from_secs(3) {
            crate::sys::kill(pid, libc::SIGKILL);
        }
        if t0.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(true)
}

/// The last `n` lines of a file.
/// The lab's emulated CPU count: `XENPROBE_LAB_CPUS`, default 2.
pub fn cpus() -> u32 {
    std::env::var("XENPROBE_LAB_CPUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
