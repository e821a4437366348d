//! Writes the generated install assets of both binaries from their clap
//! definitions: man pages (`man/mdevreg.1`, `man/mdevregd.8`) and shell
//! completions for bash, zsh and fish (`completions/`).
//!
//! `cargo run --example gen_assets -- OUTDIR` (the Makefile uses
//! `target/assets`; packaging picks the files up from there).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use mdevreg::cli::{MdevregCli, MdevregdCli};

fn write_man(cmd: clap::Command, section: &str, path: &Path) -> io::Result<()> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .section(section)
        .render(&mut out)?;
    File::create(path)?.write_all(&out)
}

fn write_completions(mut cmd: clap::Command, name: &str, dir: &Path) -> io::Result<()> {
    for (shell, file_name) in [
        (Shell::Bash, name.to_owned()),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd, name, &mut out);
        File::create(dir.join(file_name))?.write_all(&out)?;
    }
    Ok(())
}

fn generate(out_dir: &Path) -> io::Result<()> {
    let man_dir = out_dir.join("man");
    let completion_dir = out_dir.join("completions");
    fs::create_dir_all(&man_dir)?;
    fs::create_dir_all(&completion_dir)?;
    write_man(MdevregCli::command(), "1", &man_dir.join("mdevreg.1"))?;
    write_man(MdevregdCli::command(), "8", &man_dir.join("mdevregd.8"))?;
    write_completions(MdevregCli::command(), "mdevreg", &completion_dir)?;
    write_completions(MdevregdCli::command(), "mdevregd", &completion_dir)?;
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out_dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: gen_assets OUTDIR");
        return ExitCode::from(2);
    };
    match generate(Path::new(&out_dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "gen_assets: cannot write to {}: {err}",
                Path::new(&out_dir).display()
            );
            ExitCode::FAILURE
        }
    }
}
