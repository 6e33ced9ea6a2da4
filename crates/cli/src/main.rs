//! The `envelope` binary: parses the command line, sets up logging and signals, and calls the
//! libraries. All behaviour lives in the library crates.
#![forbid(unsafe_code)]

// mimalloc: the plugin's RPCs are dominated by many small short-lived allocations in the
// HTTP/2 and gRPC stack, where glibc malloc spent ~15 % of the server's CPU
// (docs/benchmarks.md). Built without transparent huge pages (`no_thp`): with them the
// plugin's resident set grows by ~8 MiB for no measurable gain. Secrets are zeroized before
// they are freed, whatever the allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// Every `println!` / `print!` below (and in every module) writes through `output::print`, which
// ends the process quietly when stdout is a closed pipe instead of panicking (see output.rs).
macro_rules! println {
    () => {
        $crate::output::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

#[allow(unused_macros)]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::output::print(format_args!($($arg)*))
    };
}

mod bench;
mod cli;
mod config;
mod etcd;
mod inspect_cmd;
mod key;
mod kms_audit;
mod kms_cmd;
mod kms_credentials;
mod kms_migrate;
mod manual;
mod output;
mod plugin_cmd;
mod reencrypt;
mod reseal;
mod runtime;

use std::process::ExitCode;

use clap::Parser;

/// Exit code for bad usage or configuration (sysexits EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => EXIT_CONFIG,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        cli::Command::Plugin(args) => plugin_cmd::run(*args),
        cli::Command::Key(args) => key::run(args),
        cli::Command::Bench(args) => bench::run(args),
        cli::Command::Inspect(args) => inspect_cmd::run_inspect(args),
        cli::Command::Decrypt(args) => inspect_cmd::run_decrypt(args),
        cli::Command::Kms(args) => kms_cmd::run(args),
        cli::Command::Reencrypt(args) => reencrypt::run(args),
        cli::Command::Completions(args) => manual::completions(args),
        cli::Command::Man(args) => manual::man(args),
    }
}
