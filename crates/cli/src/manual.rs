//! `envelope completions` and `envelope man`: shell completions and manual pages generated from
//! the same clap definitions that parse the command line, so they never drift from it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

/// Options of `envelope completions`.
#[derive(Debug, Args)]
#[command(after_help = "Install, for example:\n  \
envelope completions bash > /etc/bash_completion.d/envelope\n  \
envelope completions zsh > \"${fpath[1]}/_envelope\"\n  \
envelope completions fish > ~/.config/fish/completions/envelope.fish")]
pub struct CompletionsArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

/// Options of `envelope man`.
#[derive(Debug, Args)]
#[command(after_help = "Install, for example:\n  \
envelope man --out-dir /usr/local/share/man/man1 && mandb -q\n  \
man envelope-plugin")]
pub struct ManArgs {
    /// Write envelope.1 and one page per command (envelope-plugin.1, envelope-kms-serve.1, …)
    /// into this directory (created if missing) instead of printing envelope(1) to stdout.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// The command line as clap sees it, with the binary's name.
fn command() -> clap::Command {
    crate::cli::Cli::command()
}

pub fn completions(args: CompletionsArgs) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command(), "envelope", &mut script);
    write_stdout(&script)
}

pub fn man(args: ManArgs) -> ExitCode {
    match args.out_dir {
        None => {
            let mut page = Vec::new();
            if let Err(e) = clap_mangen::Man::new(command()).render(&mut page) {
                eprintln!("envelope: cannot render the manual page: {e}");
                return ExitCode::FAILURE;
            }
            write_stdout(&page)
        }
        Some(dir) => {
            let written = std::fs::create_dir_all(&dir).and_then(|()| clap_mangen::generate_to(command(), &dir));
            match written {
                Ok(()) => {
                    println!("manual pages written to {}", dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("envelope: cannot write manual pages to {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn write_stdout(bytes: &[u8]) -> ExitCode {
    crate::output::print(format_args!("{}", String::from_utf8_lossy(bytes)));
    ExitCode::SUCCESS
}
