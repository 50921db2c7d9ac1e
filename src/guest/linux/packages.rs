//! `--package NAME`: Debian packages and their runtime dependencies, from the host's apt (as
//! `kit fetch` does). apt's own resolver picks the set, as if installing into an empty system
//! (`apt-get -s` with an empty dpkg status, without recommends); `apt-get download` fetches the
//! `.deb`s into the cache and `dpkg-deb -x` unpacks them into one tree, cached by the exact set.
//! Maintainer scripts are not run: no `postinst`, no triggers, no `ldconfig`, no alternatives.

use super::kit;
use anyhow::{bail, Context};
use sha2::Digest;
use std::path::PathBuf;
use std::process::Command;

/// The packages, unpacked.
pub struct PackageTree {
    /// A directory holding every package's files.
    pub tree: PathBuf,
    /// `name_version_arch` of each package, sorted: the exact set.
    pub debs: Vec<String>,
}

/// `…/packages`: `debs/` holds the downloaded files, `trees/` one unpacked tree per set.
pub fn packages_dir() -> PathBuf {
    kit::cache_dir().join("packages")
}

/// One line of `apt-get -s install`: `Inst NAME (VERSION ORIGINS [ARCH])`.
fn parse_inst(line: &str) -> Option<(String, String, String)> {
    let rest = line.strip_prefix("Inst ")?;
    let (name, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix('(')?;
    let (version, rest) = rest.split_once(' ')?;
    let inner = rest.split_once(')')?.0;
    let arch = inner.rsplit_once('[')?.1.strip_suffix(']')?;
    Some((name.to_string(), version.to_string(), arch.to_string()))
}

fn apt_message(stderr: &[u8], stdout: &[u8]) -> String {
    let text = format!("{}\n{}", String::from_utf8_lossy(stderr), String::from_utf8_lossy(stdout));
    let errors: Vec<&str> = text.lines().map(str::trim).filter(|l| l.starts_with("E:")).collect();
    if errors.is_empty() {
        String::from_utf8_lossy(stderr).trim().to_string()
    } else {
        errors.join(" ")
    }
}

/// Whether `n` may be given to apt as a package: letters, digits and `+-.:=_~`, not starting
/// with `-` (which apt would read as an option, such as `-oAPT::X=1`). A grid's `packages` are
/// checked with it when the grid is read.
pub fn is_package_name(n: &str) -> bool {
    !n.is_empty() && !n.starts_with('-') && n.chars().all(|c| c.is_ascii_alphanumeric() || "+-.:=_~".contains(c))
}

/// Resolves, downloads (when not cached) and unpacks `names` with their dependencies.
pub fn prepare(names: &[String], progress: &mut dyn FnMut(&str)) -> anyhow::Result<PackageTree> {
    let list = names.join(", ");
    for tool in ["apt-get", "dpkg-deb"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!(
                "--package {list}: this host has no `{tool}` (apt, on Debian or Ubuntu); put the programs and their \
                 libraries into a directory or tarball and pass it with --rootfs instead"
            );
        }
    }
    for n in names {
        if !is_package_name(n) {
            bail!("--package {n}: not a Debian package name");
        }
    }
    let out = Command::new("apt-get")
        .env("LC_ALL", "C")
        .args(["-s", "-q", "-o", "Dir::State::status=/dev/null", "-o", "APT::Install-Recommends=false"])
        .args(["-o", "APT::Install-Suggests=false", "install", "--"])
        .args(names)
        .output()
        .context("cannot run apt-get")?;
    if !out.status.success() {
        bail!("--package {list}: apt-get cannot resolve it: {}", apt_message(&out.stderr, &out.stdout));
    }
    let mut wanted: Vec<(String, String, String)> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(parse_inst).collect();
    if wanted.is_empty() {
        bail!("--package {list}: apt-get resolved it to no package to install");
    }
    let file = |(name, version, arch): &(String, String, String)| {
        let bare = name.split(':').next().unwrap_or(name);
        format!("{bare}_{}_{arch}.deb", version.replace(':', "%3a"))
    };
    wanted.sort_by_key(file);
    let dir = packages_dir();
    let debs_dir = dir.join("debs");
    std::fs::create_dir_all(&debs_dir).with_context(|| format!("cannot create {}", debs_dir.display()))?;
    let missing: Vec<&(String, String, String)> = wanted.iter().filter(|w| !debs_dir.join(file(w)).exists()).collect();
    if !missing.is_empty() {
        progress(&format!("downloading {} packages with apt-get", missing.len()));
        let tmp = dir.join(format!(".download-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let result = Command::new("apt-get")
            .current_dir(&tmp)
            .env("LC_ALL", "C")
            .args(["-q", "download", "--"])
            .args(missing.iter().map(|(n, v, _)| format!("{n}={v}")))
            .output()
            .context("cannot run apt-get download");
        let moved = result.and_then(|o| {
            if !o.status.success() {
                bail!("--package {list}: apt-get download failed: {}", apt_message(&o.stderr, &o.stdout));
            }
            for w in &missing {
                let f = file(w);
                std::fs::rename(tmp.join(&f), debs_dir.join(&f))
                    .with_context(|| format!("--package {list}: apt-get download did not leave {f}"))?;
            }
            Ok(())
        });
        let _ = std::fs::remove_dir_all(&tmp);
        moved?;
    }
    let debs: Vec<String> = wanted.iter().map(file).collect();
    let key: String = crate::units::hex(&sha2::Sha256::digest(debs.join("\n"))[..10]);
    let tree = dir.join("trees").join(&key);
    if !tree.is_dir() {
        progress(&format!("unpacking {} packages", debs.len()));
        let tmp = dir.join("trees").join(format!(".{key}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let unpacked = debs.iter().try_for_each(|d| {
            let out = Command::new("dpkg-deb").arg("-x").arg(debs_dir.join(d)).arg(&tmp).output()?;
            if !out.status.success() {
                bail!("dpkg-deb -x {d} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(())
        });
        if let Err(e) = unpacked {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.context(format!("--package {list}")));
        }
        if std::fs::rename(&tmp, &tree).is_err() {
            // Another process unpacked the same set first.
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    Ok(PackageTree { tree, debs: debs.into_iter().map(|d| d.trim_end_matches(".deb").to_string()).collect() })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_apt_simulation_lines() {
        let l = "Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64])";
        assert_eq!(super::parse_inst(l), Some(("libc6".into(), "2.36-9+deb12u14".into(), "amd64".into())));
        let l =
            "Inst libx11-data (2:1.8.4-2+deb12u2 Debian:12.15/oldstable, Debian-Security:12/oldstable-security [all])";
        assert_eq!(super::parse_inst(l), Some(("libx11-data".into(), "2:1.8.4-2+deb12u2".into(), "all".into())));
        let l = "Inst libgcc-s1 (12.2.0-14+deb12u1 Debian:12.15/oldstable [amd64]) []";
        assert_eq!(super::parse_inst(l), Some(("libgcc-s1".into(), "12.2.0-14+deb12u1".into(), "amd64".into())));
        assert_eq!(super::parse_inst("Conf libc6 (2.36)"), None);
    }
}
