//! `strongroom-client`: the reference client on the command line. Each command loads the
//! device state from `--home` (a 0600 `state.json`: tokens, the ECDHE channel, the keys it
//! holds, per room its own key), does its work through the core and saves the state. An
//! expired channel (499) is replaced by a fresh handshake through the relay.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use strongroom_client::{Client, Saved};
use uuid::Uuid;

/// Reference client for strongroom: encrypted rooms over an untrusted core, keys from your
/// organization's KMS reached through the core's relay.
#[derive(Parser)]
#[command(name = "strongroom-client", version)]
struct Cli {
    /// Directory holding this device's state (state.json, mode 0600).
    #[arg(
        long,
        env = "STRONGROOM_CLIENT_HOME",
        default_value = ".strongroom-client"
    )]
    home: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Log in at the core's identity service and open a KMS channel through the relay.
    Login {
        /// The core's URL (`core_url` of `strongroom dev`).
        #[arg(long)]
        core: String,
        /// The CA certificate (PEM) the core's TLS certificate chains to (`core_ca_pem`).
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        email: String,
        /// This device's name; each device creates and binds its own keys (R8).
        #[arg(long, default_value = "cli")]
        client_id: String,
    },
    /// Print this device's user, organization, KMS and channel.
    Whoami,
    /// Create a room: a KMS resource with a fresh key, then the core room with the encrypted title.
    CreateRoom { title: String },
    /// List my rooms with their decrypted titles and the external-participant indicator.
    Rooms,
    /// Show a room: title, members, external indicator.
    Show { room: Uuid },
    /// Add a member (two-part membership change, R10).
    Add { room: Uuid, user: Uuid },
    /// Remove a member (two-part; the next message uses a fresh key, R9).
    Remove { room: Uuid, user: Uuid },
    /// Leave a room.
    Leave { room: Uuid },
    /// Send an encrypted message.
    Send { room: Uuid, text: String },
    /// Send a file, encrypted.
    SendFile { room: Uuid, path: PathBuf },
    /// Read a room's messages, files and membership events (after the last read, or --after).
    Read {
        room: Uuid,
        #[arg(long)]
        after: Option<u64>,
        /// Save received files into this directory.
        #[arg(long)]
        save_files: Option<PathBuf>,
    },
}

fn state_path(home: &Path) -> PathBuf {
    home.join("state.json")
}

fn save(home: &Path, c: &Client) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(home)?;
    let tmp = home.join("state.json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(serde_json::to_string(&c.save())?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, state_path(home))?;
    Ok(())
}

async fn load(home: &Path) -> anyhow::Result<Client> {
    let p = state_path(home);
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "reading {} (run `strongroom-client login` first)",
            p.display()
        )
    })?;
    let saved: Saved = serde_json::from_str(&text).context("state.json is damaged")?;
    Client::restore(saved).await
}

fn external(flag: bool) -> &'static str {
    if flag {
        "  [EXTERNAL: people of another organization are in this room]"
    } else {
        ""
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let mut c = match &cli.command {
        Cmd::Login {
            core,
            ca,
            email,
            client_id,
        } => {
            let http = strongroom_client::https_client(ca)?;
            let ca = std::path::absolute(ca)?;
            let c = Client::login(&http, core, &ca, email, client_id).await?;
            println!(
                "logged in as {} (org {}); KMS {}",
                c.user,
                c.org,
                c.kms_cluster()
            );
            c
        }
        _ => load(&cli.home).await?,
    };
    match cli.command {
        Cmd::Login { .. } => {}
        Cmd::Whoami => println!(
            "user {}\norg {}\nkms {}\nchannel {}",
            c.user,
            c.org,
            c.kms_cluster(),
            c.channel_uri().unwrap_or("-")
        ),
        Cmd::CreateRoom { title } => println!("{}", c.create_room(&title).await?),
        Cmd::Rooms => {
            let v = c.core().get("/rooms").await?;
            for id in v["rooms"].as_array().context("no rooms")? {
                let id: Uuid = serde_json::from_value(id.clone())?;
                let r = c.room(id).await?;
                println!("{id}  {}{}", r.title, external(r.external));
            }
        }
        Cmd::Show { room } => {
            let r = c.room(room).await?;
            println!("room {}\ntitle {}{}", r.id, r.title, external(r.external));
            println!("resource {}", r.resource_uri);
            for m in r.members {
                println!("member {m}");
            }
        }
        Cmd::Add { room, user } => println!("{}", c.add_member(room, user).await?),
        Cmd::Remove { room, user } => println!("{}", c.remove_member(room, user).await?),
        Cmd::Leave { room } => {
            let me = c.user;
            println!("{}", c.remove_member(room, me).await?);
        }
        Cmd::Send { room, text } => println!("sent #{}", c.send(room, &text).await?),
        Cmd::SendFile { room, path } => {
            let data =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let name = path
                .file_name()
                .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned());
            println!("sent #{}", c.send_file(room, &name, &data).await?);
        }
        Cmd::Read {
            room,
            after,
            save_files,
        } => {
            for item in c.read(room, after).await? {
                println!("{item}");
                if let (Some(dir), strongroom_client::Item::File { name, data, .. }) =
                    (&save_files, &item)
                {
                    let safe = Path::new(name).file_name().context("bad file name")?;
                    std::fs::create_dir_all(dir)?;
                    std::fs::write(dir.join(safe), data)?;
                }
            }
        }
    }
    save(&cli.home, &c)
}
