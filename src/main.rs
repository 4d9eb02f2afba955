//! The palpipe binary: parse, dispatch, render an error once, exit with its code.

use clap::Parser;
use palpipe::cli::{dispatch, Cli};

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
            let mut lines = format!("{:#}", e.error);
            if lines.is_empty() {
                lines = "unknown error".into();
            }
            eprintln!("palpipe: error: {lines}");
            std::process::exit(e.code);
        }
    }
}
