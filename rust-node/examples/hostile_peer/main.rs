//! `hostile_peer`: attacks the provider records of a running cluster (rust-node or BEAM nodes)
//! as a peer with a valid identity of its own would, and prints what each node answered, one
//! line per request: `ATTACK NODE ANSWER`.
//!
//! ```text
//! hostile_peer attack  --service S --node ADDR...              forged store, forged remove,
//!                                                              store with another node's id
//! hostile_peer capture --service S --out FILE --node ADDR...   keep the signed records held now
//! hostile_peer replay  --from FILE --service S --node ADDR...  store them again
//! hostile_peer inject  --service S --for SECS --node ADDR...   answer lookups with forgeries
//! hostile_peer flood   --records N --node ADDR [--identity F]  STOREs of its own, beyond quota
//! ```
//!
//! Only for testing one's own nodes on a test network.

mod attacks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use attacks::Hostile;
use clap::{Parser, Subcommand};
use macula_dht::wire::{Request, Response, SealedRecord};
use macula_dht_node::{id_hex, service_key, Identity};

#[derive(Parser)]
#[command(about = "Attacks the provider records of a test cluster and prints the answers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Forged STORE and REMOVE under each provider of the service, and a STORE naming another
    /// node's id, to every node.
    Attack {
        #[arg(long)]
        service: String,
        #[arg(long = "node", required = true)]
        nodes: Vec<SocketAddr>,
    },
    /// Writes the signed records of the service the nodes hold now to FILE; prints the nodes
    /// holding one (`held_by ADDR`).
    Capture {
        #[arg(long)]
        service: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long = "node", required = true)]
        nodes: Vec<SocketAddr>,
    },
    /// Sends every record captured in FILE to every node again.
    Replay {
        #[arg(long)]
        service: String,
        #[arg(long)]
        from: PathBuf,
        #[arg(long = "node", required = true)]
        nodes: Vec<SocketAddr>,
    },
    /// Joins the nodes with an id close to the service's key and, for SECS seconds, answers
    /// every lookup of it with providers their publishers never signed.
    Inject {
        #[arg(long)]
        service: String,
        #[arg(long = "for", value_name = "SECS")]
        secs: u64,
        #[arg(long = "node", required = true)]
        nodes: Vec<SocketAddr>,
    },
    /// Sends the node N signed STOREs of new records of its own, 16 at a time.
    Flood {
        #[arg(long)]
        records: usize,
        #[arg(long)]
        node: SocketAddr,
        /// Key file of the flooder (created if missing), so that floods of several runs come
        /// from one publisher; default: a new identity.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
}

/// Identities tried for the one closest to the key (the closest of 256 is nearer than any node
/// of a small cluster, most of the time).
const NEAR_TRIES: usize = 256;

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostile_peer: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Attack { service, nodes } => {
            let key = service_key(&service);
            let hostile = fresh()?;
            let (victims, _) = held_anywhere(&hostile, &key, &nodes).await;
            if victims.is_empty() {
                return Err(format!("no node holds a record of {service}"));
            }
            for victim in &victims {
                let requests = [
                    ("forged_store", hostile.forged_store(&key, victim)),
                    ("forged_remove", hostile.forged_remove(&key, victim)),
                    (
                        "wrong_publisher",
                        hostile.wrong_publisher_store(&key, victim),
                    ),
                ];
                for (attack, request) in &requests {
                    for node in &nodes {
                        println!("{attack} {node} {}", hostile.send(*node, request).await);
                    }
                }
            }
            hostile.close().await;
        }
        Command::Capture {
            service,
            out,
            nodes,
        } => {
            let key = service_key(&service);
            let hostile = fresh()?;
            let (captured, holders) = held_anywhere(&hostile, &key, &nodes).await;
            for node in holders {
                println!("held_by {node}");
            }
            let frame = Response::Value {
                providers: captured,
                nodes: Vec::new(),
            };
            std::fs::write(&out, frame.encode())
                .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            hostile.close().await;
        }
        Command::Replay {
            service,
            from,
            nodes,
        } => {
            let key = service_key(&service);
            let frame =
                std::fs::read(&from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
            let Ok(Response::Value { providers, .. }) = Response::decode(&frame) else {
                return Err(format!("{} holds no captured records", from.display()));
            };
            let hostile = fresh()?;
            for record in providers {
                let request = Request::Store {
                    key: key.to_vec(),
                    record,
                };
                for node in &nodes {
                    println!("replay {node} {}", hostile.send(*node, &request).await);
                }
            }
            hostile.close().await;
        }
        Command::Inject {
            service,
            secs,
            nodes,
        } => {
            let key = service_key(&service);
            let scout = fresh()?;
            let (victims, _) = held_anywhere(&scout, &key, &nodes).await;
            scout.close().await;
            if victims.is_empty() {
                return Err(format!("no node holds a record of {service}"));
            }
            let hostile = Hostile::bind(&attacks::identity_near(&key, NEAR_TRIES)?)?;
            let served = hostile.serve_injections(&key, &victims)?;
            for node in &nodes {
                println!("join {node} {}", hostile.send(*node, &Request::Ping).await);
            }
            println!("serving {} {}", hostile.addr(), id_hex(&hostile.id()));
            tokio::time::sleep(Duration::from_secs(secs)).await;
            println!("served {}", served.load(Ordering::Relaxed));
            hostile.close().await;
        }
        Command::Flood {
            records,
            node,
            identity,
        } => {
            let hostile = match identity {
                Some(path) => {
                    Hostile::bind(&Identity::load_or_create(&path).map_err(|e| e.to_string())?)?
                }
                None => fresh()?,
            };
            let tally = hostile.flood(node, records, 16).await;
            let counts: Vec<String> = tally.iter().map(|(a, n)| format!("{a}={n}")).collect();
            println!("flood {node} {}", counts.join(" "));
            hostile.close().await;
        }
    }
    Ok(())
}

fn fresh() -> Result<Hostile, String> {
    Hostile::bind(&Identity::generate().map_err(|e| e.to_string())?)
}

/// Every distinct record of `key` the nodes hold, and the nodes holding one.
async fn held_anywhere(
    hostile: &Hostile,
    key: &[u8],
    nodes: &[SocketAddr],
) -> (Vec<SealedRecord>, Vec<SocketAddr>) {
    let (mut all, mut holders) = (Vec::new(), Vec::new());
    for node in nodes {
        let held = hostile.held(*node, key).await;
        if !held.is_empty() {
            holders.push(*node);
        }
        for record in held {
            if !all.contains(&record) {
                all.push(record);
            }
        }
    }
    (all, holders)
}
