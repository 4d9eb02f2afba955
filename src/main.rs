//! The palpipe binary: parse, dispatch, render an error once, exit with its code.

use clap::Parser;
use palpipe::cli::{dispatch, Cli};
use palpipe::pipeline::progress::to_stderr;

/// mimalloc instead of the system allocator: the ingest makes and frees several small
/// strings per row, where glibc's allocator spent a third of the read's time.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its `mimalloc.h`, v2 and v3 alike): how long freed
/// memory waits before it is handed back to the OS, in ms; -1 never.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory for reuse instead of handing it back to the OS (mimalloc v3, the one
/// built here, purges after 1 s by default), unless the environment sets the purge delay
/// (`MIMALLOC_PURGE_DELAY`, or any spelling mimalloc reads: those win over a default). A
/// training step frees and allocates the same tensors every step, and memory handed back
/// page-faults when it is allocated again, with the kernel zeroing it each time: measured
/// with `perf`, that zeroing was a quarter of the CPU time of `palpipe bench-pal` and about
/// 15% of an ingest's; never purging takes the page faults of a PAL training step from
/// about 1,400 to none. The cost: memory freed after a peak stays with the process until it
/// ends (for `palpipe serve`, the largest request's peak; README.md, "Threads and memory").
fn keep_freed_memory() {
    // SAFETY: sets one of mimalloc's options to a value its documentation allows. The
    // option is a plain integer, so this runs first in `main`, before any other thread
    // exists to read it.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, -1) };
}

/// Turns transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`, Linux),
/// unless the environment sets `MIMALLOC_ALLOW_THP` (then mimalloc's own choice stands).
/// mimalloc asks for huge pages on the memory it reserves (`madvise(MADV_HUGEPAGE)`, before
/// `main` runs, so its option comes too late), and where the kernel grants them on request
/// (`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise` or `always`) each first
/// touch of a 2 MiB region waits for the kernel to find, compact and zero a huge page:
/// measured with `perf` on a 100 MB ingest, that was a fifth of the samples and 0.6–2.3 s of
/// system time, against 0.3–0.4 s without (bench/README.md, "Ingest of JSON lines"). PAL
/// training and MiniLM embedding measured within their spread either way.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: a plain prctl call with integer arguments; failure leaves things as they
        // were, which is fine (an old kernel without the flag).
        let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

/// candle's element-wise unary and binary operations (additions, products, activations) run
/// in one thread unless `CANDLE_NUM_THREADS` says otherwise; matrix products still use every
/// core (rayon's pool, `RAYON_NUM_THREADS`), as do candle-nn's softmax and layer norm.
/// candle's element-wise pool spin-waits at a barrier after each operation: on this
/// project's 2-core machine `perf` put 22–30% of a PAL step's or a MiniLM batch's samples
/// in that spin, and with another process on the cores the spinning thread takes turns with
/// the one doing the work (bench/README.md, "Thread pools").
fn one_elementwise_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Sound because nothing else runs yet (the first lines of `main`, before any
        // thread). Child processes inherit the setting, which only changes their speed.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Lance encodes and decodes on its own CPU pool of `LANCE_CPU_THREADS` threads, by default
/// the cores less two it keeps for I/O, and at least one: on a 2-core machine one thread, so
/// a 100 MB ingest compressed its strings (FSST, 45% of the samples after the read) on one
/// core while the other waited. Unless the environment says otherwise palpipe gives that
/// pool every core: the 100 MB ingest went from 2.20–2.45 to 2.07–2.26 s (bench/README.md,
/// "Ingest of JSON lines"); on larger machines it adds the two threads Lance keeps back.
fn lance_cpu_threads_per_core() {
    if std::env::var_os("LANCE_CPU_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Sound for the same reason as in `one_elementwise_thread`: no other thread yet.
        std::env::set_var("LANCE_CPU_THREADS", cores.to_string());
    }
}

/// Lance's two thread settings with the least value each may take: `LANCE_CPU_THREADS`
/// (threads of its CPU pool) and `LANCE_IO_CORE_RESERVATION` (cores it keeps for I/O).
const LANCE_THREAD_SETTINGS: [(&str, usize); 2] =
    [("LANCE_CPU_THREADS", 1), ("LANCE_IO_CORE_RESERVATION", 0)];

/// Checks Lance's thread settings the way Lance reads them (the value, trimmed, as a whole
/// number no less than the least allowed; a value that is not UTF-8 counts as unset), so a
/// bad one is refused with one line before any work. Lance itself reads them the first
/// time it needs its CPU pool (the reservation only where `LANCE_CPU_THREADS` is unset,
/// which palpipe never leaves it, or for a full-text index) and panics on a bad value,
/// with a backtrace instead of a message.
///
/// # Errors
/// The message names the variable, what it must be, and the value found.
fn check_lance_thread_settings() -> Result<(), String> {
    for (name, least) in LANCE_THREAD_SETTINGS {
        let Ok(raw) = std::env::var(name) else {
            continue;
        };
        match raw.trim().parse::<usize>() {
            Ok(n) if n >= least => {}
            _ => {
                return Err(format!(
                    "the environment variable {name} must be a whole number of at least \
                     {least}, got '{raw}'"
                ))
            }
        }
    }
    Ok(())
}

fn main() {
    keep_freed_memory();
    no_huge_pages();
    one_elementwise_thread();
    lance_cpu_threads_per_core();
    // After parsing, so `--help` and `--version` answer whatever the environment holds.
    let cli = Cli::parse();
    if let Err(message) = check_lance_thread_settings() {
        to_stderr(format_args!("palpipe: error: {message}"));
        std::process::exit(2);
    }
    match dispatch(cli) {
        Ok(()) => {}
        Err(e) => {
            // A closed pipe (`palpipe sql … | head`) is not an error worth a message.
            if e.error.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                std::process::exit(0);
            }
            // A closed stderr loses the message, not the exit code.
            to_stderr(format_args!(
                "palpipe: error: {}",
                palpipe::cli::render_error(&e.error)
            ));
            std::process::exit(e.code);
        }
    }
}

#[cfg(test)]
mod tests {
    /// The option number is mimalloc's purge delay, and the default set takes: -1 read back.
    #[test]
    fn freed_memory_is_kept() {
        super::keep_freed_memory();
        // SAFETY: reads one option; no other test touches mimalloc's options.
        let got = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(got, -1);
    }

    /// After `no_huge_pages` the kernel reports huge pages off for the process (where the
    /// environment leaves the choice to palpipe).
    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_off() {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
            return;
        }
        super::no_huge_pages();
        // SAFETY: reads the process's flag.
        let got = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(got, 1);
    }
}
