//! Writes the synthetic guest of a workload spec as a PVH image that QEMU boots on its own
//! (`-kernel FILE`), without dirtytrace driving it: the workload starts as soon as the boot
//! code is ready, paced by this host's TSC. `examples/qemu_migration/` migrates it with QEMU.
//!
//! ```sh
//! cargo run --release --example pvh_image -- SPEC.toml IMAGE.elf
//! ```

use anyhow::Context;
use dirtytrace::guest::synthetic::{spec::WorkloadSpec, SyntheticGuest};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [spec_path, out] = args.as_slice() else {
        anyhow::bail!("usage: pvh_image SPEC.toml IMAGE.elf");
    };
    let text = std::fs::read_to_string(spec_path).with_context(|| format!("reading {spec_path}"))?;
    let spec = WorkloadSpec::parse(&text, None, None).with_context(|| spec_path.clone())?;
    let mut guest = SyntheticGuest::new(spec, text)?;
    let image = guest.pvh_image()?;
    std::fs::write(out, image.standalone_elf()).with_context(|| format!("writing {out}"))?;
    Ok(())
}
