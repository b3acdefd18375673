//! What a chain's plugins can see: a plugin that asks for frames its connection never sends
//! does nothing there, silently. A gate that wants typed `line` frames on a shell judges the
//! terminal but never a one-shot script (a `statement`). Checked at every policy load
//! (`sluice serve`, reload, `sluice policy`) and reported as warnings: the policy is valid,
//! but probably not what its author meant.

use sluice_core::frame::{ContentKind, Direction, Interest, SessionKind};

use sluice_plugin_host::LoadedPlugin;

use crate::config::Connection;

/// The kinds of session a connection runs.
pub fn session_kinds(connection: &Connection) -> &'static [SessionKind] {
    match connection {
        Connection::Exec(_) | Connection::Ssh(_) => {
            &[SessionKind::ExecScript, SessionKind::Terminal]
        }
        Connection::Postgres(_) => &[SessionKind::Postgres],
        Connection::Tcp(_) => &[SessionKind::Tcp],
        Connection::Mcp(_) => &[SessionKind::Mcp],
    }
}

/// One plugin of a chain that never sees some sessions' frames it would need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlindSpot {
    pub plugin: String,
    pub connection: String,
    pub kind: SessionKind,
    pub direction: Direction,
    /// What the plugin asks for in that direction.
    pub wants: Vec<ContentKind>,
    /// What carries the commands (client to target) or the output (target to client) of
    /// such sessions.
    pub carried_by: Vec<ContentKind>,
}

impl std::fmt::Display for BlindSpot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |kinds: &[ContentKind]| {
            kinds
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (what, direction) = match self.direction {
            Direction::ClientToTarget => ("commands", "client-to-target"),
            Direction::TargetToClient => ("output", "target-to-client"),
        };
        write!(
            f,
            "plugin `{}` on connection `{}` never sees the {what} of {} sessions: it wants {direction} [{}], which they send as [{}]. \
             Add those kinds to its interest (docs/plugins.md, \"What each session sends\")",
            self.plugin,
            self.connection,
            self.kind.name(),
            names(&self.wants),
            names(&self.carried_by),
        )
    }
}

/// The blind spots of one plugin, given the interest it declared for the check session,
/// on one connection. A direction it wants nothing in is its choice, not a blind spot.
pub fn blind_spots(
    plugin: &str,
    interest: &Interest,
    connection_name: &str,
    connection: &Connection,
) -> Vec<BlindSpot> {
    let mut found = Vec::new();
    for &kind in session_kinds(connection) {
        for (direction, wants) in [
            (Direction::ClientToTarget, &interest.client_to_target),
            (Direction::TargetToClient, &interest.target_to_client),
        ] {
            let carried_by = match direction {
                Direction::ClientToTarget => kind.commands(),
                Direction::TargetToClient => kind.sends(direction),
            };
            if !wants.is_empty() && !wants.iter().any(|k| carried_by.contains(k)) {
                found.push(BlindSpot {
                    plugin: plugin.to_string(),
                    connection: connection_name.to_string(),
                    kind,
                    direction,
                    wants: wants.clone(),
                    carried_by: carried_by.to_vec(),
                });
            }
        }
    }
    found
}

/// The blind spots of every plugin in a connection's chain, by the interest each declared to
/// the check session when it was loaded.
pub fn chain_blind_spots(
    connection_name: &str,
    connection: &Connection,
    chain: &[LoadedPlugin],
) -> Vec<BlindSpot> {
    chain
        .iter()
        .filter_map(|plugin| Some((plugin, plugin.checked_interest()?)))
        .flat_map(|(plugin, interest)| {
            blind_spots(&plugin.spec().name, interest, connection_name, connection)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Connection {
        toml::from_str(
            r#"kind = "exec"
               interactive = ["bash", "-i"]
               script = ["bash", "-s"]"#,
        )
        .unwrap()
    }

    fn pg() -> Connection {
        toml::from_str(
            r#"kind = "postgres"
               listen = "127.0.0.1:7432"
               upstream = "127.0.0.1:5432"
               database = "postgres"
               user = "postgres""#,
        )
        .unwrap()
    }

    fn wanting(c2t: &[ContentKind], t2c: &[ContentKind]) -> Interest {
        Interest {
            client_to_target: c2t.to_vec(),
            target_to_client: t2c.to_vec(),
            stateless: false,
            prescreen: None,
        }
    }

    #[test]
    fn a_gate_on_typed_lines_is_blind_to_one_shot_scripts() {
        let gate = wanting(&[ContentKind::Line], &[]);
        let spots = blind_spots("words", &gate, "shell", &exec());
        assert_eq!(spots.len(), 1, "{spots:?}");
        assert_eq!(spots[0].kind, SessionKind::ExecScript);
        assert_eq!(spots[0].carried_by, vec![ContentKind::Statement]);
        let message = spots[0].to_string();
        assert!(
            message.contains("never sees the commands of exec-script sessions"),
            "{message}"
        );
        // Wanting statements too covers both kinds of shell session.
        let gate = wanting(&[ContentKind::Line, ContentKind::Statement], &[]);
        assert_eq!(blind_spots("words", &gate, "shell", &exec()), vec![]);
    }

    #[test]
    fn a_masker_of_bytes_is_blind_to_postgres_output() {
        let masker = wanting(&[], &[ContentKind::Bytes]);
        let spots = blind_spots("ids", &masker, "pg", &pg());
        assert_eq!(spots.len(), 1, "{spots:?}");
        assert_eq!(spots[0].direction, Direction::TargetToClient);
        // On a shell, bytes are what the target prints: nothing to warn about.
        assert_eq!(blind_spots("ids", &masker, "shell", &exec()), vec![]);
        // Everything (the default interest) is never blind.
        let all = wanting(&ContentKind::ALL, &ContentKind::ALL);
        assert_eq!(blind_spots("any", &all, "pg", &pg()), vec![]);
    }
}
