//! `pronto version|alias|provision`: clients of the release API of a running `pronto serve`
//! (versions, aliases with a weighted second version, provisioned instances).

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::client::{call, call_with_query, list_all, Endpoint, FUNCTIONS};
use crate::output::{cell, fields, Output, Table};

#[derive(Subcommand, Debug)]
pub enum VersionCommand {
    /// Publish LATEST as a new, immutable version (prints it, with its number).
    Publish {
        /// Function name.
        name: String,
        /// What this version is (at most 256 characters).
        #[arg(long)]
        description: Option<String>,
    },
    /// List a function's versions, newest first.
    List {
        /// Function name.
        name: String,
    },
    /// Delete a version (refused while an alias names it).
    Delete {
        /// Function name.
        name: String,
        /// The version number.
        version: String,
    },
}

pub async fn version(ep: &Endpoint, o: &Output, cmd: VersionCommand) -> anyhow::Result<()> {
    match cmd {
        VersionCommand::Publish { name, description } => {
            let body = description.map(|d| json!({ "description": d }));
            let out = call(
                ep,
                Method::POST,
                &format!("{FUNCTIONS}/{name}/versions"),
                body,
            )
            .await?;
            o.print(&out, |v, _| {
                fields(v, &["versionId", "description", "resolvedImageUri"])
            })
        }
        VersionCommand::List { name } => {
            let out = list_all(ep, &format!("{FUNCTIONS}/{name}/versions"), "versions").await?;
            o.print(&out, version_table)
        }
        VersionCommand::Delete { name, version } => {
            call(
                ep,
                Method::DELETE,
                &format!("{FUNCTIONS}/{name}/versions/{version}"),
                None,
            )
            .await?;
            println!("deleted version {version} of {name}");
            Ok(())
        }
    }
}

/// A weight of the second version: a share of the invocations, 0 to 1.
fn parse_weight(s: &str) -> Result<f64, String> {
    let w: f64 = s
        .parse()
        .map_err(|_| format!("{s:?}: expected a number from 0 to 1"))?;
    if !(0.0..=1.0).contains(&w) {
        return Err(format!("{s:?}: must be from 0 to 1"));
    }
    Ok(w)
}

/// The second version of an alias and its share.
#[derive(Args, Debug)]
pub struct Split {
    /// A second version that gets a share (`--weight`) of the invocations (a canary).
    #[arg(long, requires = "weight")]
    pub additional_version: Option<String>,
    /// The second version's share of the invocations, 0 to 1 (e.g. 0.1).
    #[arg(long, requires = "additional_version", value_parser = parse_weight)]
    pub weight: Option<f64>,
}

impl Split {
    /// `additionalVersionWeight`, if a second version was given.
    fn weights(&self) -> Option<Value> {
        let v = self.additional_version.as_ref()?;
        Some(json!({ v.clone(): self.weight? }))
    }
}

#[derive(Subcommand, Debug)]
pub enum AliasCommand {
    /// Create an alias that names a version (and maybe sends a share to a second one).
    Create {
        /// Function name.
        name: String,
        /// Alias name (`[A-Za-z_][A-Za-z0-9_-]*`).
        alias: String,
        /// The version it names.
        #[arg(long)]
        version: String,
        #[command(flatten)]
        split: Split,
        /// What the alias is for.
        #[arg(long)]
        description: Option<String>,
    },
    /// Change an alias (only what is given).
    Update {
        /// Function name.
        name: String,
        /// Alias name.
        alias: String,
        /// The version it names from now on.
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        split: Split,
        /// End the split: every invocation goes to `--version` (or the current one).
        #[arg(long, conflicts_with_all = ["additional_version", "weight"])]
        no_split: bool,
        /// What the alias is for.
        #[arg(long)]
        description: Option<String>,
    },
    /// Show an alias.
    Get {
        /// Function name.
        name: String,
        /// Alias name.
        alias: String,
    },
    /// Delete an alias.
    Delete {
        /// Function name.
        name: String,
        /// Alias name.
        alias: String,
    },
    /// List a function's aliases.
    List {
        /// Function name.
        name: String,
    },
}

pub async fn alias(ep: &Endpoint, o: &Output, cmd: AliasCommand) -> anyhow::Result<()> {
    let out = match cmd {
        AliasCommand::Create {
            name,
            alias,
            version,
            split,
            description,
        } => {
            let mut body = Map::new();
            body.insert("aliasName".into(), alias.into());
            body.insert("versionId".into(), version.into());
            if let Some(w) = split.weights() {
                body.insert("additionalVersionWeight".into(), w);
            }
            if let Some(d) = description {
                body.insert("description".into(), d.into());
            }
            call(
                ep,
                Method::POST,
                &format!("{FUNCTIONS}/{name}/aliases"),
                Some(body.into()),
            )
            .await?
        }
        AliasCommand::Update {
            name,
            alias,
            version,
            split,
            no_split,
            description,
        } => {
            let mut body = Map::new();
            if let Some(v) = version {
                body.insert("versionId".into(), v.into());
            }
            if no_split {
                body.insert("additionalVersionWeight".into(), json!({}));
            } else if let Some(w) = split.weights() {
                body.insert("additionalVersionWeight".into(), w);
            }
            if let Some(d) = description {
                body.insert("description".into(), d.into());
            }
            if body.is_empty() {
                anyhow::bail!(
                    "nothing to change: give --version, --additional-version with --weight, \
                     --no-split or --description"
                );
            }
            call(
                ep,
                Method::PUT,
                &format!("{FUNCTIONS}/{name}/aliases/{alias}"),
                Some(body.into()),
            )
            .await?
        }
        AliasCommand::Get { name, alias } => {
            call(
                ep,
                Method::GET,
                &format!("{FUNCTIONS}/{name}/aliases/{alias}"),
                None,
            )
            .await?
        }
        AliasCommand::Delete { name, alias } => {
            call(
                ep,
                Method::DELETE,
                &format!("{FUNCTIONS}/{name}/aliases/{alias}"),
                None,
            )
            .await?;
            println!("deleted alias {alias} of {name}");
            return Ok(());
        }
        AliasCommand::List { name } => {
            let out = list_all(ep, &format!("{FUNCTIONS}/{name}/aliases"), "aliases").await?;
            return o.print(&out, alias_table);
        }
    };
    o.print(&out, |v, _| {
        fields(v, &["aliasName", "versionId", "additionalVersionWeight"])
    })
}

/// `version list` for people.
fn version_table(v: &Value, o: &Output) -> String {
    let mut t = Table::new(["VERSION", "IMAGE", "ACCELERATION", "CREATED", "DESCRIPTION"]);
    for x in v["versions"].as_array().into_iter().flatten() {
        t.row([
            cell(&x["versionId"]),
            cell(&x["resolvedImageUri"]),
            x["accelerationInfo"]["status"]
                .as_str()
                .map_or("off".into(), |s| o.status(s)),
            cell(&x["createdTime"]),
            cell(&x["description"]),
        ]);
    }
    t.render()
}

/// `alias list` for people.
fn alias_table(v: &Value, _: &Output) -> String {
    let mut t = Table::new(["ALIAS", "VERSION", "ADDITIONAL", "DESCRIPTION", "MODIFIED"]);
    for a in v["aliases"].as_array().into_iter().flatten() {
        let additional = a["additionalVersionWeight"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(v, w)| format!("{v} ({w})"))
            .collect::<Vec<_>>()
            .join(", ");
        t.row([
            cell(&a["aliasName"]),
            cell(&a["versionId"]),
            cell(&Value::String(additional)),
            cell(&a["description"]),
            cell(&a["lastModifiedTime"]),
        ]);
    }
    t.render()
}

/// `provision list` for people.
fn provision_table(v: &Value, _: &Output) -> String {
    let mut t = Table::new(["FUNCTION", "QUALIFIER", "TARGET", "CURRENT"]);
    for p in v["provisionConfigs"].as_array().into_iter().flatten() {
        t.row([
            cell(&p["functionName"]),
            cell(&p["qualifier"]),
            cell(&p["target"]),
            cell(&p["current"]),
        ]);
    }
    t.render()
}

#[derive(Subcommand, Debug)]
pub enum ProvisionCommand {
    /// Keep N instances of a qualifier started and warm (0 releases them).
    Put {
        /// Function name.
        name: String,
        /// Instances to keep started (at most the function's maxInstances).
        #[arg(long)]
        target: u32,
        /// `LATEST` (the default), a version number or an alias (its main version).
        #[arg(long)]
        qualifier: Option<String>,
    },
    /// Show a provision config and how many of its instances run now.
    Get {
        /// Function name.
        name: String,
        /// `LATEST` (the default), a version number or an alias.
        #[arg(long)]
        qualifier: Option<String>,
    },
    /// Delete a provision config (its instances are released).
    Delete {
        /// Function name.
        name: String,
        /// `LATEST` (the default), a version number or an alias.
        #[arg(long)]
        qualifier: Option<String>,
    },
    /// List provision configs.
    List {
        /// Only this function's.
        #[arg(long)]
        function: Option<String>,
    },
}

pub async fn provision(ep: &Endpoint, o: &Output, cmd: ProvisionCommand) -> anyhow::Result<()> {
    let config = |name: &str| format!("{FUNCTIONS}/{name}/provision-config");
    // Absent: the server's default, LATEST.
    let query = |q: Option<String>| -> Vec<(&str, String)> {
        q.map(|q| ("qualifier", q)).into_iter().collect()
    };
    let out = match cmd {
        ProvisionCommand::Put {
            name,
            target,
            qualifier,
        } => {
            call_with_query(
                ep,
                Method::PUT,
                &config(&name),
                &query(qualifier),
                Some(json!({ "target": target })),
            )
            .await?
        }
        ProvisionCommand::Get { name, qualifier } => {
            call_with_query(ep, Method::GET, &config(&name), &query(qualifier), None).await?
        }
        ProvisionCommand::Delete { name, qualifier } => {
            let q = qualifier.clone().unwrap_or_else(|| "LATEST".into());
            call_with_query(ep, Method::DELETE, &config(&name), &query(qualifier), None).await?;
            println!("deleted the provision config of {name} ({q})");
            return Ok(());
        }
        ProvisionCommand::List { function } => {
            let query: Vec<_> = function.map(|f| ("functionName", f)).into_iter().collect();
            let out = call_with_query(
                ep,
                Method::GET,
                "/2023-03-30/provision-configs",
                &query,
                None,
            )
            .await?;
            return o.print(&out, provision_table);
        }
    };
    o.print(&out, |v, _| {
        fields(v, &["functionName", "qualifier", "target", "current"])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_shares_from_0_to_1() {
        assert_eq!(parse_weight("0.25"), Ok(0.25));
        assert_eq!(parse_weight("1"), Ok(1.0));
        assert_eq!(
            parse_weight("1.5").unwrap_err(),
            "\"1.5\": must be from 0 to 1"
        );
        assert_eq!(
            parse_weight("half").unwrap_err(),
            "\"half\": expected a number from 0 to 1"
        );
        assert!(parse_weight("NaN").is_err());
    }

    #[test]
    fn a_split_becomes_additional_version_weight() {
        let split = Split {
            additional_version: Some("2".into()),
            weight: Some(0.1),
        };
        assert_eq!(split.weights(), Some(json!({"2": 0.1})));
        let none = Split {
            additional_version: None,
            weight: None,
        };
        assert_eq!(none.weights(), None);
    }
}
