//! BPF_PROG_TEST_RUN: the kernel runs a loaded program on a frame handed to it, with
//! no device and no traffic. The classifier benchmark times the program with it, the
//! filter-model test compares its verdicts with a userspace model.
use std::os::fd::{AsFd, AsRawFd};

/// What one BPF_PROG_TEST_RUN returned.
pub struct TestRun {
    /// The program's return value of the last run (`TC_ACT_*` for tc programs).
    pub retval: u32,
    /// Mean nanoseconds per run, measured by the kernel.
    pub duration_ns: u32,
}

/// Runs `prog` `repeat` times on `data` (an Ethernet frame). Err when the kernel
/// refuses the call, e.g. EINVAL for a frame shorter than the header it announces.
pub fn test_run(prog: impl AsFd, data: &[u8], repeat: u32) -> std::io::Result<TestRun> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    /// The `test` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    let mut attr = Attr {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix for this command;
    // `data` and the program's fd outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut Attr,
            size_of::<Attr>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(TestRun {
        retval: attr.retval,
        duration_ns: attr.duration,
    })
}
