//! `extstorage providers`: list and diagnose providers.

use extstorage_core::ExtStorage;

use crate::exit;
use crate::output::Output;

/// Arguments of `providers`.
#[derive(Debug, clap::Args)]
pub struct ProvidersArgs {
    /// Only this provider (exit 1 when it is invalid, 2 when not found).
    #[arg(long)]
    provider: Option<String>,
}

/// Runs `providers`.
pub fn run(es: &ExtStorage, args: &ProvidersArgs, out: &Output) -> anyhow::Result<u8> {
    let mut diags = es.diagnose();
    if let Some(name) = &args.provider {
        extstorage_core::names::validate_provider_name(name)?;
        diags.retain(|d| &d.name == name);
        if diags.is_empty() {
            // Reuse the core's not-found error for its message.
            return Err(es.provider(name).err().map_or_else(
                || anyhow::anyhow!("provider {name:?} not found"),
                anyhow::Error::from,
            ));
        }
    }
    out.print(&diags, || {
        let mut text = String::new();
        if diags.is_empty() {
            let dirs: Vec<String> = es
                .config()
                .search_path
                .dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            text.push_str(&format!("no providers found in {}", dirs.join(", ")));
        }
        for d in &diags {
            let state = if d.valid { "valid" } else { "INVALID" };
            text.push_str(&format!(
                "{:<20} {:<8} {}\n",
                d.name,
                state,
                d.path.display()
            ));
            if let Some(reason) = &d.reason {
                text.push_str(&format!("    reason: {reason}\n"));
            }
            if let Some(by) = &d.shadowed_by {
                text.push_str(&format!("    shadowed by: {}\n", by.display()));
            }
            for p in &d.parameters {
                text.push_str(&format!("    parameter {}: {}\n", p.name, p.description));
            }
            if !d.optional.is_empty() {
                text.push_str(&format!(
                    "    optional scripts: {}\n",
                    d.optional.join(", ")
                ));
            }
        }
        text.trim_end().to_owned()
    })?;
    let failed =
        args.provider.is_some() && diags.iter().any(|d| d.shadowed_by.is_none() && !d.valid);
    Ok(if failed { exit::FAILED } else { exit::OK })
}
