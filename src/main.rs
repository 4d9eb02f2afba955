//! The palpipe binary: parse, dispatch, render an error once, exit with its code.

use clap::Parser;
use palpipe::cli::{dispatch, Cli};

/// mimalloc instead of the system allocator: the ingest makes and frees several small
/// strings per row, where glibc's allocator spent a third of the read's time.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its `mimalloc.h`, v2 and v3 alike): how long freed
/// memory waits before it is handed back to the OS, in ms; -1 never.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory for reuse instead of handing it back after mimalloc's default 10 ms,
/// unless `MIMALLOC_PURGE_DELAY` is set. A training step frees and allocates the same
/// tensors every step, and memory handed back page-faults when it is allocated again, with
/// the kernel zeroing it each time: measured with `perf`, that zeroing was a quarter of the
/// CPU time of `palpipe bench-pal` and about 15% of an ingest's; never purging takes the
/// page faults of a PAL training step from about 1,400 to none. The cost: memory freed
/// after a peak is kept (`bench-pal`'s peak RSS 1,464 → 1,610 MiB; the ingest's unchanged).
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options to a value its documentation allows; it
        // is read with atomic loads, so setting it at any time is sound.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// candle's element-wise operations (additions, GELU, softmax, reductions) run in one thread unless `CANDLE_NUM_THREADS` says otherwise; its matrix
/// products still use every core (rayon, `RAYON_NUM_THREADS`). candle's element-wise pool
/// spin-waits at a barrier after each operation: on this project's 2-core machine `perf`
/// put 22–30% of a PAL step's or a MiniLM batch's samples in that spin, and with another
/// process on the cores the spinning thread takes turns with the one doing the work
/// (bench/README.md, "Thread pools").
fn one_elementwise_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Set before any thread exists (the first thing `main` does), so no other thread
        // reads the environment while it changes.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

fn main() {
    keep_freed_memory();
    one_elementwise_thread();
    let cli = Cli::parse();
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
            eprintln!("palpipe: error: {}", palpipe::cli::render_error(&e.error));
            std::process::exit(e.code);
        }
    }
}
