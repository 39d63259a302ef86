//! Helpers for the container tests (tests/tests/it/containers.rs): the real
//! Docker Engine, images built here `FROM scratch` from a static C listener
//! (tests/fixtures/container/listener.c; no registry is reachable), and
//! guards that remove every container and image a test made.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Panics with the reason unless the Docker Engine answers.
pub fn require_docker() {
    crate::require_root();
    let out = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "this test needs the Docker Engine, and `docker info` failed: {} (start dockerd; `cargo xtask test` starts it)",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!(
            "this test needs the Docker Engine, and `docker` cannot run ({e}): install docker.io (`cargo xtask setup --test`)"
        ),
    }
}

/// `docker ARGS`, panicking with its stderr when it fails.
pub fn docker(args: &[&str]) -> String {
    let out = docker_output(args);
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn docker_output(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker: {e}"))
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name no other test (or other engineer's run) uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// An image of the static listener, removed when dropped.
pub struct Image {
    pub tag: String,
    /// The build context (the static binary and its Dockerfile).
    _context: tempfile::TempDir,
}

impl Image {
    /// Compiles the listener with `cc -static` and builds an image of it.
    pub fn build() -> Image {
        Image::build_with("")
    }

    /// [`Image::build`] with more Dockerfile lines (e.g. `STOPSIGNAL SIGQUIT`).
    pub fn build_with(dockerfile_lines: &str) -> Image {
        let dir = tempfile::tempdir().unwrap();
        let src = crate::workspace().join("tests/fixtures/container/listener.c");
        let bin = dir.path().join("listener");
        let cc = Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("cannot run cc (install gcc and libc6-dev): {e}"));
        assert!(
            cc.status.success(),
            "cc -static {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&cc.stderr)
        );
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!("FROM scratch\nCOPY listener /listener\n{dockerfile_lines}\nENTRYPOINT [\"/listener\"]\n"),
        )
        .unwrap();
        let tag = format!("{}:latest", unique("reaper-test-listener"));
        let ctx: PathBuf = dir.path().to_path_buf();
        docker(&["build", "-q", "-t", &tag, ctx.to_str().unwrap()]);
        Image { tag, _context: dir }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = docker_output(&["rmi", "-f", &self.tag]);
    }
}

/// A container, removed (with -f) when dropped.
pub struct Container {
    pub name: String,
    pub id: String,
}

impl Container {
    /// `docker run -d --name NAME [extra] IMAGE`: extra carries -p and labels.
    pub fn run(image: &Image, extra: &[&str]) -> Container {
        let name = unique("reaper-test");
        let mut args = vec!["run", "-d", "--name", &name];
        args.extend_from_slice(extra);
        args.push(&image.tag);
        let id = docker(&args);
        Container { name, id }
    }

    /// `docker run -p 127.0.0.1:PORT:80 [extra]` of `image` (a listener on
    /// port 80); returns once the published port answers through the proxy.
    pub fn published(image: &Image, extra: &[&str]) -> (Container, u16) {
        let port = crate::free_port();
        let map = format!("127.0.0.1:{port}:80");
        let mut args = vec!["-p", map.as_str()];
        args.extend_from_slice(extra);
        let c = Container::run(image, &args);
        crate::poll_until(
            "the published port to answer",
            std::time::Duration::from_secs(20),
            || {
                use std::io::Read;
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
                let mut buf = String::new();
                s.read_to_string(&mut buf).ok()?;
                (buf == "ok\n").then_some(())
            },
        );
        (c, port)
    }

    /// The engine's state word: running, exited, ...
    pub fn state(&self) -> String {
        docker(&["inspect", "--format", "{{.State.Status}}", &self.id])
    }

    /// Its main process's exit status, as the engine saw it.
    pub fn exit_code(&self) -> i32 {
        docker(&["inspect", "--format", "{{.State.ExitCode}}", &self.id])
            .parse()
            .unwrap()
    }

    /// The docker-proxy pids that publish a host port for this container.
    pub fn proxy_pids(port: u16) -> Vec<u32> {
        let want = format!("-host-port {port} ");
        all_pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|b| {
                        let line = String::from_utf8_lossy(&b).replace('\0', " ");
                        line.contains("docker-proxy") && line.contains(&want)
                    })
                    .unwrap_or(false)
            })
            .collect()
    }
}

/// Every pid in /proc now (reaper's own reader).
pub fn all_pids() -> Vec<u32> {
    reaper::proc::pids().unwrap().collect()
}

/// Whether a process is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    reaper::proc::read_stat(pid).is_some_and(|s| s.state != 'Z')
}

/// A container by name (or id), removed (with -f) when dropped: for one a
/// test started itself (`docker run --name`, a CI step).
pub struct Removed(pub String);

impl Removed {
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = docker_output(&["rm", "-f", &self.0]);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker_output(&["rm", "-f", &self.id]);
    }
}
