//! The floor under any relay built on tokio, for `benches/pg.sh` (targets `tokio-copy` and
//! `tokio-copy-1`): accept a connection, dial the server, copy bytes both ways with
//! `copy_bidirectional`. No parsing, no plugin, no record: what the runtime and the kernel
//! cost per transaction on this machine, against pgbouncer's figure in the same run.
//!
//!   cargo run --release --example relay_floor -- LISTEN UPSTREAM [WORKERS]
//!
//! WORKERS 0 runs tokio's current-thread runtime (one thread for everything); otherwise the
//! multi-threaded runtime with that many workers (2, as the gateway has here, by default).

use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: relay_floor LISTEN UPSTREAM [WORKERS]");
        std::process::exit(2);
    };
    let workers: usize = args
        .next()
        .map_or(Ok(2), |w| w.parse())
        .unwrap_or_else(|_| {
            eprintln!("WORKERS is a number");
            std::process::exit(2);
        });
    let runtime = match workers {
        0 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        loop {
            let (mut client, _) = listener.accept().await?;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    })
}
