//! Workloads for the node-fault tests: a process holding memory in its own cgroup
//! (for GC pressure) and a set of files sitting in the page cache (for cache
//! invalidation). Both are removed on drop.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{Netns, agent_binary};

/// A workload cgroup with one process holding 64 MiB; removed on drop.
pub struct Workload {
    /// Relative to the cgroup root, as `--target-cgroup` takes it.
    pub rel: String,
    pub dir: PathBuf,
    pub limit_file: PathBuf,
    child: Child,
}

impl Workload {
    pub fn new(tag: &str) -> Self {
        let rel = format!("fltest-{tag}-{}", std::process::id());
        let v2 = crate::node::cgroup_v2();
        crate::node::delegate_below_root();
        let dir = if v2 {
            PathBuf::from("/sys/fs/cgroup").join(&rel)
        } else {
            PathBuf::from("/sys/fs/cgroup/memory").join(&rel)
        };
        std::fs::create_dir(&dir).unwrap();
        let limit_file = dir.join(if v2 {
            "memory.high"
        } else {
            "memory.soft_limit_in_bytes"
        });
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let until = (ts.tv_sec as u64 + 120) * 1_000_000_000;
        // Join the group first, then allocate: memory is charged where it is touched.
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec {} __stressor memory --bytes {} --until-ns {until}",
            dir.display(),
            agent_binary().display(),
            64u64 << 20
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let usage = dir.join(if v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        });
        for _ in 0..100 {
            let u: u64 = std::fs::read_to_string(&usage)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            if u >= 60 << 20 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            rel,
            dir,
            limit_file,
            child,
        }
    }

    /// The soft limit in force now.
    pub fn limit(&self) -> String {
        std::fs::read_to_string(&self.limit_file).unwrap()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Where test files go: a filesystem with a real page cache. The temp dir by
/// default; the VM lane points this at a 9p mount with cache=loose, since its /tmp
/// is tmpfs (shmem pages, which no fadvise evicts).
pub fn scratch() -> PathBuf {
    std::env::var_os("FAULTLINE_TEST_CACHE_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// 8 files x 4 MiB of data, read once so they sit in the page cache; removed when
/// the returned path is dropped (also when the test fails).
pub fn file_set(tag: &str) -> crate::TempPath {
    let dir =
        crate::TempPath::adopt(scratch().join(format!("fl-cache-{tag}-{}", std::process::id())));
    std::fs::create_dir_all(&*dir).unwrap();
    for i in 0..8u8 {
        let data: Vec<u8> = (0..4u32 << 20).map(|b| (b as u8) ^ i).collect();
        std::fs::write(dir.join(format!("f{i}")), data).unwrap();
    }
    // SAFETY: sync(2); clean pages are what fadvise can drop at once.
    unsafe { libc::sync() };
    read_all(&dir);
    dir
}

pub fn read_all(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        std::hint::black_box(std::fs::read(e.unwrap().path()).unwrap());
    }
}

/// An application's HTTP endpoint on 127.0.0.1 (of `ns`, or of the host): answers
/// `requests` requests with 204 and reports the request lines it saw.
pub fn hook_server(
    ns: Option<&Netns>,
    requests: usize,
) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{BufRead, BufReader, Write};
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // A socket created inside a namespace stays there wherever it is used.
    let listener = match ns {
        Some(ns) => ns.enter(bind),
        None => bind(),
    };
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            seen.push(line.trim().to_owned());
            // Drain the headers before answering.
            let mut h = String::new();
            while reader.read_line(&mut h).unwrap() > 2 {
                h.clear();
            }
            stream
                .write_all(
                    b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .unwrap();
        }
        seen
    });
    (port, handle)
}

/// An HTTP endpoint that answers every request with the same head (status line and
/// headers, e.g. a redirect) and counts the requests it served, until dropped.
pub struct Responder {
    pub port: u16,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    /// Listens on `addr` (`127.0.0.1:0`, or an address of `ns`) inside `ns` (or the
    /// host) and answers with `head` (e.g. "302 Found\r\nlocation: http://...").
    pub fn new(ns: Option<&Netns>, addr: &str, head: &str) -> Self {
        use std::{
            io::{BufRead, BufReader, Write},
            sync::atomic::Ordering,
        };
        let addr = addr.to_owned();
        let bind = move || std::net::TcpListener::bind(addr).unwrap();
        let listener = match ns {
            Some(ns) => ns.enter(bind),
            None => bind(),
        };
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let response = format!("HTTP/1.1 {head}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        let (count, halt) = (served.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut reader = BufReader::new(&stream);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                count.fetch_add(1, Ordering::Relaxed);
                let _ = (&stream).write_all(response.as_bytes());
            }
        });
        Self {
            port,
            served,
            stop,
            thread: Some(thread),
        }
    }

    /// How many requests it answered so far.
    pub fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
