//! The guest kernel kit: a kernel and a static busybox, found or fetched.
//!
//! Lookup order: `--kernel`, then `$DIRTYTRACE_KERNEL` and `$DIRTYTRACE_BUSYBOX`, then the kit
//! that `dirtytrace kit fetch` keeps in the cache directory. `kit fetch` downloads Debian's
//! cloud kernel and busybox-static with `apt-get download`, and also keeps the ELF `vmlinux`
//! decompressed from the bzImage, so that PVH entry is available.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kit's description file, beside the kernel and busybox.
pub const KIT_JSON: &str = "kit.json";

/// What `kit fetch` fetched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KitInfo {
    /// The kernel's Debian package.
    pub kernel_package: String,
    /// Its version.
    pub kernel_version: String,
    /// busybox's Debian package.
    pub busybox_package: String,
    /// Its version.
    pub busybox_version: String,
    /// SHA-256 of the bzImage.
    pub bzimage_sha256: String,
    /// SHA-256 of the vmlinux extracted from it.
    pub vmlinux_sha256: String,
    /// SHA-256 of busybox.
    pub busybox_sha256: String,
    /// When it was fetched, seconds since the Unix epoch.
    pub fetched_unix_s: u64,
    /// The kernel's modules that `record --disk` loads, in load order (file names in
    /// [`MODULES_DIR`]); empty in kits fetched before disks were supported.
    #[serde(default)]
    pub disk_modules: Vec<String>,
}

/// The kit's subdirectory of kernel modules for `--disk`.
pub const MODULES_DIR: &str = "modules";

/// The modules a disk needs where the kit's kernel has them as modules: the virtio PCI
/// transport and block driver, and the XFS and btrfs filesystems (ext4 is built in) with what
/// they load first. Each one's own `depends=` is followed too.
pub const DISK_MODULES: &[&str] = &[
    "virtio_blk",
    "virtio_pci",
    "xfs",
    // btrfs's soft dependencies (its checksums), which `depends=` does not name.
    "blake2b_generic",
    "xxhash_generic",
    "btrfs",
];

/// Where the kernel and busybox come from for one recording.
#[derive(Debug, Clone)]
pub struct Kit {
    /// A bzImage or an ELF vmlinux.
    pub kernel: PathBuf,
    /// The kit's other form of the same kernel, when it has both.
    pub alternate: Option<PathBuf>,
    /// A statically linked busybox.
    pub busybox: PathBuf,
    /// The kit's description, when it is the kit's.
    pub info: Option<KitInfo>,
}

/// `$DIRTYTRACE_CACHE`, else `$XDG_CACHE_HOME/dirtytrace`, else `~/.cache/dirtytrace`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DIRTYTRACE_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("dirtytrace");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("dirtytrace")
}

/// Where `kit fetch` keeps the kit.
pub fn kit_dir() -> PathBuf {
    cache_dir().join("kit")
}

/// What to do without a kit.
pub const NO_KIT: &str = "no guest kernel kit. On Debian or Ubuntu run `dirtytrace kit fetch` \
(downloads Debian's cloud kernel and busybox-static into the cache). Elsewhere pass --kernel PATH \
(a bzImage or vmlinux) and --busybox PATH (a statically linked busybox)";

/// Finds the kernel and busybox: `--kernel`, else `$DIRTYTRACE_KERNEL`, else the kit's, where
/// `prefer_bzimage` picks the bzImage when the kit has both; busybox as [`locate_busybox`].
pub fn locate(kernel_flag: Option<&Path>, busybox_flag: Option<&Path>, prefer_bzimage: bool) -> anyhow::Result<Kit> {
    let dir = kit_dir();
    let info: Option<KitInfo> =
        std::fs::read_to_string(dir.join(KIT_JSON)).ok().and_then(|t| serde_json::from_str(&t).ok());
    let env_path = |k: &str| std::env::var_os(k).map(PathBuf::from);
    let busybox = busybox_flag
        .map(Path::to_path_buf)
        .or_else(|| env_path("DIRTYTRACE_BUSYBOX"))
        .or_else(|| Some(dir.join("busybox")).filter(|p| p.exists()));
    let (kernel, alternate) = match kernel_flag.map(Path::to_path_buf).or_else(|| env_path("DIRTYTRACE_KERNEL")) {
        Some(k) => (k, None),
        None => {
            let (vmlinux, bzimage) = (dir.join("vmlinux"), dir.join("bzImage"));
            match (vmlinux.exists(), bzimage.exists()) {
                (true, true) if prefer_bzimage => (bzimage, Some(vmlinux)),
                (true, true) => (vmlinux, Some(bzimage)),
                (true, false) => (vmlinux, None),
                (false, true) => (bzimage, None),
                (false, false) => bail!("{NO_KIT}"),
            }
        }
    };
    if !kernel.exists() {
        bail!("kernel {} does not exist", kernel.display());
    }
    let busybox = busybox.ok_or_else(|| anyhow::anyhow!("no busybox for the initramfs: {NO_KIT}"))?;
    if !busybox.exists() {
        bail!("busybox {} does not exist (from --busybox, DIRTYTRACE_BUSYBOX or the kit)", busybox.display());
    }
    Ok(Kit { kernel, alternate, busybox, info })
}

/// The busybox `record` would put into the initramfs: `--busybox`, else `$DIRTYTRACE_BUSYBOX`,
/// else the kit's.
pub fn locate_busybox(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let p = flag
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("DIRTYTRACE_BUSYBOX").map(PathBuf::from))
        .unwrap_or_else(|| kit_dir().join("busybox"));
    if !p.exists() {
        bail!("no busybox for the initramfs ({} does not exist): {NO_KIT}", p.display());
    }
    Ok(p)
}

/// SHA-256, in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    crate::units::hex(&sha2::Sha256::digest(data))
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Downloads and unpacks Debian's cloud kernel and busybox-static into the kit directory.
pub fn fetch(progress: &mut dyn FnMut(&str)) -> anyhow::Result<KitInfo> {
    for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("`{tool}` is not available: `kit fetch` works on Debian and Ubuntu hosts. {NO_KIT}");
        }
    }
    let depends = run(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]), "apt-cache depends")?;
    let kernel_pkg = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .context(
            "apt-cache knows no linux-image-cloud-amd64: enable Debian's main archive (or run `apt-get update`)",
        )?;
    let dir = kit_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let work = dir.join(".fetch");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("root"))?;
    progress(&format!("downloading {kernel_pkg} and busybox-static"));
    run(
        Command::new("apt-get").current_dir(&work).args(["download", &kernel_pkg, "busybox-static"]),
        "apt-get download",
    )?;
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(&work)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            let fields =
                run(Command::new("dpkg-deb").arg("-f").arg(&path).args(["Package", "Version"]), "dpkg-deb -f")?;
            let mut f = fields.lines().map(|l| l.split_once(": ").map_or("", |x| x.1).to_string());
            versions.push((f.next().unwrap_or_default(), f.next().unwrap_or_default()));
            run(Command::new("dpkg-deb").arg("-x").arg(&path).arg(work.join("root")), "dpkg-deb -x")?;
        }
    }
    let version_of = |p: &str| versions.iter().find(|v| v.0 == p).map(|v| v.1.clone()).unwrap_or_default();
    let boot = work.join("root/boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .with_context(|| format!("{kernel_pkg} has no /boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .with_context(|| format!("{kernel_pkg} has no /boot/vmlinuz-*"))?;
    let bzimage = std::fs::read(&vmlinuz)?;
    let busybox = std::fs::read(work.join("root/bin/busybox")).context("busybox-static has no /bin/busybox")?;
    progress("decompressing vmlinux from the bzImage");
    let vmlinux = extract_vmlinux(&bzimage)?;
    progress("keeping the kernel's disk modules");
    let disk_modules = keep_disk_modules(&work.join("root/lib/modules"), &dir.join(MODULES_DIR))?;
    for (name, data) in [("bzImage", &bzimage), ("vmlinux", &vmlinux), ("busybox", &busybox)] {
        std::fs::write(dir.join(name), data).with_context(|| format!("cannot write {}", dir.join(name).display()))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("busybox"), std::fs::Permissions::from_mode(0o755))?;
    let info = KitInfo {
        kernel_version: version_of(&kernel_pkg),
        kernel_package: kernel_pkg,
        busybox_package: "busybox-static".into(),
        busybox_version: version_of("busybox-static"),
        bzimage_sha256: sha256_hex(&bzimage),
        vmlinux_sha256: sha256_hex(&vmlinux),
        busybox_sha256: sha256_hex(&busybox),
        fetched_unix_s: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        disk_modules,
    };
    std::fs::write(dir.join(KIT_JSON), serde_json::to_string_pretty(&info)? + "\n")?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(info)
}

/// A module's `KEY=` field from its `.modinfo` strings (NUL-separated `key=value`).
fn modinfo<'a>(ko: &'a [u8], key: &str) -> Option<&'a str> {
    let needle = format!("\0{key}=");
    let at = ko.windows(needle.len()).position(|w| w == needle.as_bytes())? + needle.len();
    let end = ko[at..].iter().position(|&b| b == 0)?;
    std::str::from_utf8(&ko[at..at + end]).ok()
}

/// Copies [`DISK_MODULES`] and their dependencies from an unpacked `lib/modules` into `to`
/// (replacing what was there), and returns their file names in an order `insmod` can load.
fn keep_disk_modules(lib_modules: &Path, to: &Path) -> anyhow::Result<Vec<String>> {
    let mut found = std::collections::HashMap::new();
    let mut stack = vec![lib_modules.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))?.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
                found.insert(name.replace('-', "_"), p);
            }
        }
    }
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut order = Vec::new();
    fn visit(
        name: &str,
        found: &std::collections::HashMap<String, PathBuf>,
        order: &mut Vec<String>,
        to: &Path,
        depth: usize,
    ) -> anyhow::Result<()> {
        let file = format!("{name}.ko");
        // Built in, or not in this kernel: nothing to load.
        let Some(path) = found.get(name) else { return Ok(()) };
        if order.contains(&file) || depth > 32 {
            return Ok(());
        }
        let ko = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        for dep in modinfo(&ko, "depends").unwrap_or("").split(',').filter(|d| !d.is_empty()) {
            visit(&dep.replace('-', "_"), found, order, to, depth + 1)?;
        }
        std::fs::write(to.join(&file), &ko).with_context(|| format!("cannot write {}", to.join(&file).display()))?;
        order.push(file);
        Ok(())
    }
    for name in DISK_MODULES {
        visit(name, &found, &mut order, to, 0)?;
    }
    Ok(order)
}

/// The kit's disk modules, in load order, as `(file name, path)`; an error says to fetch the
/// kit again when it has none.
pub fn disk_modules(kit: &Kit) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let names = kit.info.as_ref().map(|i| i.disk_modules.clone()).unwrap_or_default();
    if names.is_empty() {
        bail!(
            "the guest kernel kit has no disk modules (virtio-blk, xfs, btrfs): it was fetched before --disk existed, \
             or the kernel is not the kit's. Run `dirtytrace kit fetch` again"
        );
    }
    let dir = kit_dir().join(MODULES_DIR);
    Ok(names.into_iter().map(|n| (n.clone(), dir.join(n))).collect())
}

const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4C, 0x18];
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// The ELF vmlinux inside a bzImage: its payload, decompressed (LZ4 legacy, gzip or zstd).
pub fn extract_vmlinux(bzimage: &[u8]) -> anyhow::Result<Vec<u8>> {
    let u32_at = |o: usize| bzimage.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    if u32_at(0x202) != Some(0x5372_6448) {
        bail!("not a bzImage (no `HdrS` boot header at 0x202)");
    }
    let setup_sects = match bzimage[0x1F1] {
        0 => 4,
        n => n as usize,
    };
    let (offset, length) = (u32_at(0x248).unwrap_or(0) as usize, u32_at(0x24C).unwrap_or(0) as usize);
    let start = (setup_sects + 1) * 512 + offset;
    let payload = bzimage
        .get(start..start + length)
        .context("the bzImage is truncated: its payload runs past the end of the file")?;
    let out = match payload {
        [0x02, 0x21, 0x4C, 0x18, ..] => lz4_legacy(payload)?,
        [0x1F, 0x8B, ..] => {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(payload), &mut out)
                .context("the bzImage's gzip payload is corrupt")?;
            out
        }
        [0x28, 0xB5, 0x2F, 0xFD, ..] => {
            zstd::stream::decode_all(payload).context("the bzImage's zstd payload is corrupt")?
        }
        _ => bail!(
            "the bzImage's payload uses a compression dirtytrace does not decompress (it reads LZ4, gzip, zstd); \
             pass an uncompressed vmlinux with --kernel"
        ),
    };
    if !out.starts_with(b"\x7fELF") {
        bail!("the bzImage's payload does not decompress to an ELF vmlinux");
    }
    Ok(out)
}

/// LZ4's legacy frame, as the kernel's build writes it: blocks of `size u32 | data`, each up
/// to 8 MiB decompressed, possibly followed by the kernel's 4-byte decompressed-size trailer.
fn lz4_legacy(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while data.len() >= 4 {
        if data[..4] == LZ4_LEGACY_MAGIC {
            data = &data[4..];
            continue;
        }
        let size = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
        if size > data.len() - 4 {
            break; // the size trailer
        }
        let n =
            lz4_flex::block::decompress_into(&data[4..4 + size], &mut block).context("the LZ4 payload is corrupt")?;
        out.extend_from_slice(&block[..n]);
        data = &data[4 + size..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_a_bzimage() {
        assert!(extract_vmlinux(&[0u8; 4096]).unwrap_err().to_string().contains("not a bzImage"));
        let mut truncated = vec![0u8; 4096];
        truncated[0x202..0x206].copy_from_slice(b"HdrS");
        truncated[0x1F1] = 4;
        truncated[0x24C..0x250].copy_from_slice(&100_000u32.to_le_bytes());
        assert!(extract_vmlinux(&truncated).unwrap_err().to_string().contains("truncated"));
    }

    #[test]
    fn modinfo_fields_are_read_from_the_strings() {
        let ko = b"\x7fELF junk\0license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0";
        assert_eq!(modinfo(ko, "depends"), Some("virtio,virtio_ring"));
        assert_eq!(modinfo(ko, "name"), Some("virtio_blk"));
        assert_eq!(modinfo(ko, "softdep"), None);
    }

    #[test]
    fn lz4_legacy_round_trip() {
        let elf: Vec<u8> =
            b"\x7fELF".iter().copied().chain((0..50_000u32).flat_map(|i| (i % 251).to_le_bytes())).collect();
        let block = lz4_flex::block::compress(&elf);
        let mut payload = LZ4_LEGACY_MAGIC.to_vec();
        payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        assert_eq!(lz4_legacy(&payload).unwrap(), elf);
    }
}
