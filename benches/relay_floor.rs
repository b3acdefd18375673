//! The floor under any relay built on tokio, for `benches/pg.sh` (targets `tokio-copy`,
//! `tokio-copy-1` and `tokio-copy-pinned`): accept a connection, dial the server, copy bytes
//! both ways with `copy_bidirectional`. No parsing, no plugin, no record: what the runtime
//! and the kernel cost per transaction on this machine, against pgbouncer's figure in the
//! same run.
//!
//!   cargo run --release --example relay_floor -- LISTEN UPSTREAM [WORKERS]
//!
//! WORKERS 0 runs tokio's current-thread runtime (one thread for everything); `pN` runs N
//! current-thread runtimes on threads of their own, each accepting from the one listener and
//! keeping the connections it accepted (thread-per-core: no task ever moves between threads);
//! otherwise the multi-threaded runtime with that many workers (2, as the gateway has here,
//! by default).

use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: relay_floor LISTEN UPSTREAM [WORKERS|pN]");
        std::process::exit(2);
    };
    let workers = args.next().unwrap_or_else(|| "2".into());
    let number = |n: &str| {
        n.parse::<usize>().unwrap_or_else(|_| {
            eprintln!("WORKERS is a number, or pN for N pinned threads");
            std::process::exit(2);
        })
    };
    if let Some(pinned) = workers.strip_prefix('p') {
        let listener = std::net::TcpListener::bind(&listen)?;
        listener.set_nonblocking(true)?;
        let threads: Vec<_> = (0..number(pinned))
            .map(|_| {
                let (listener, upstream) = (listener.try_clone(), upstream.clone());
                std::thread::spawn(move || -> std::io::Result<()> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async {
                        relay(TcpListener::from_std(listener?)?, upstream).await
                    })
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a relay thread panicked")?;
        }
        return Ok(());
    }
    let runtime = match number(&workers) {
        0 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(async move { relay(TcpListener::bind(&listen).await?, upstream).await })
}

/// Accepts and relays until the listener fails, each connection a task of this runtime.
async fn relay(listener: TcpListener, upstream: String) -> std::io::Result<()> {
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
}
