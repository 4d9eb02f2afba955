//! The palpipe binary: parse, dispatch, render an error once, exit with its code.

use clap::Parser;
use palpipe::cli::{dispatch, Cli};

/// mimalloc instead of the system allocator: the ingest makes and frees several small
/// strings per row, where glibc's allocator spent a third of the read's time.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
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
