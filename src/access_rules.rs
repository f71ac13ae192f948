//! Who may do what on a node: ordered access rules matching a client's network and
//! transport, first match wins.
//!
//! SECoP has no authentication ("SECoP does not handle security"), so the only thing a
//! gateway knows about a client is where it connects from and how. That is still worth
//! a lot on a facility network: the control network may drive the hardware, the office
//! network may look, everybody else is turned away before a byte is read. A rule gives
//! `full`, `read_only` (`change` → `ReadOnly`, `do` → `Disabled`, as on a read-only
//! view) or `deny`, and may set how many connections one client address may hold.
//! An address that no rule matches is denied.
//!
//! This file only decides; the listener enforces `deny` and the connection limit, the
//! node enforces `read_only` (`secop_actors::node::access`).

use ipnet::IpNet;
use secop_actors::node::Access;
use serde::Deserialize;
use std::fmt;
use std::net::IpAddr;

/// How a client reaches the node; `http` is every HTTP request that is not a WebSocket
/// upgrade (status page, metrics, health).
pub use secop_actors::node::SessionTransport as Transport;

/// What a matching rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    Full,
    ReadOnly,
    Deny,
}

impl Grant {
    /// The session access, or `None` for a client that is turned away.
    pub fn access(self) -> Option<Access> {
        match self {
            Grant::Full => Some(Access::Full),
            Grant::ReadOnly => Some(Access::ReadOnly),
            Grant::Deny => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Grant::Full => "full",
            Grant::ReadOnly => "read_only",
            Grant::Deny => "deny",
        }
    }
}

/// One `[[node.access]]` / `[[extra_node.access]]` entry as written in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Client networks in CIDR notation ("10.1.0.0/16", "::1/128") or single addresses.
    pub networks: Vec<String>,
    /// Transports the rule applies to; all when absent.
    pub transports: Option<Vec<Transport>>,
    /// `full`, `read_only` or `deny`.
    pub access: Grant,
    /// Connections one client address may hold (overrides
    /// `listen.max_connections_per_address` for the addresses of this rule).
    pub max_connections_per_address: Option<usize>,
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub networks: Vec<IpNet>,
    pub transports: Option<Vec<Transport>>,
    pub grant: Grant,
    pub max_connections_per_address: Option<usize>,
}

/// Why a rule in the config is not valid.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RuleError {
    #[error("networks: {0:?} is neither a network like 10.1.0.0/16 nor an address")]
    Network(String),
    #[error("networks: must list at least one network")]
    NoNetworks,
    #[error("transports: must list at least one of tcp, websocket, http (or be left out)")]
    NoTransports,
    #[error("max_connections_per_address: must be at least 1")]
    ZeroLimit,
}

impl Rule {
    pub fn from_config(config: &RuleConfig) -> Result<Rule, RuleError> {
        if config.networks.is_empty() {
            return Err(RuleError::NoNetworks);
        }
        let networks = config
            .networks
            .iter()
            .map(|n| parse_network(n).ok_or_else(|| RuleError::Network(n.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        if config.transports.as_ref().is_some_and(Vec::is_empty) {
            return Err(RuleError::NoTransports);
        }
        if config.max_connections_per_address == Some(0) {
            return Err(RuleError::ZeroLimit);
        }
        Ok(Rule {
            networks,
            transports: config.transports.clone(),
            grant: config.access,
            max_connections_per_address: config.max_connections_per_address,
        })
    }

    fn covers(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.networks.iter().any(|n| n.contains(&address))
    }

    fn applies(&self, address: IpAddr, transport: Transport) -> bool {
        self.covers(address)
            && self
                .transports
                .as_ref()
                .is_none_or(|t| t.contains(&transport))
    }
}

fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

/// A node's rules, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRules {
    rules: Vec<Rule>,
    /// The listener's per-address limit, for addresses whose rule sets none.
    default_limit: usize,
}

impl AccessRules {
    /// The rules used when a node configures none: loopback clients may do everything
    /// (what the gateway always allowed), every other client may only look. A site that
    /// listens on the network writes its own rules for its control network.
    pub fn default_rules() -> Vec<Rule> {
        let net = |s: &str| parse_network(s).into_iter().collect::<Vec<_>>();
        vec![
            Rule {
                networks: [net("127.0.0.0/8"), net("::1/128")].concat(),
                transports: None,
                grant: Grant::Full,
                max_connections_per_address: None,
            },
            Rule {
                networks: [net("0.0.0.0/0"), net("::/0")].concat(),
                transports: None,
                grant: Grant::ReadOnly,
                max_connections_per_address: None,
            },
        ]
    }

    pub fn new(rules: Vec<Rule>, default_limit: usize) -> AccessRules {
        AccessRules {
            rules,
            default_limit,
        }
    }

    /// What a client at `address` gets over `transport`: the first rule that matches
    /// both; denied when none does.
    pub fn grant(&self, address: IpAddr, transport: Transport) -> Grant {
        self.rules
            .iter()
            .find(|r| r.applies(address, transport))
            .map_or(Grant::Deny, |r| r.grant)
    }

    /// Whether every transport is denied to `address`: such a client is closed as soon
    /// as it connects, before a byte is read.
    pub fn denies_everything(&self, address: IpAddr) -> bool {
        [Transport::Tcp, Transport::WebSocket, Transport::Http]
            .into_iter()
            .all(|t| self.grant(address, t) == Grant::Deny)
    }

    /// Connections one client address may hold: the limit of the first rule that covers
    /// the address (whatever its transports) and sets one, else the listener's.
    pub fn connection_limit(&self, address: IpAddr) -> usize {
        self.rules
            .iter()
            .filter(|r| r.covers(address))
            .find_map(|r| r.max_connections_per_address)
            .unwrap_or(self.default_limit)
    }
}

impl fmt::Display for AccessRules {
    /// The effective rules, one per line, as `check-config` prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.rules.iter().enumerate() {
            let networks: Vec<String> = r.networks.iter().map(ToString::to_string).collect();
            let transports = match &r.transports {
                None => "any transport".to_owned(),
                Some(t) => t.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(","),
            };
            let limit = r.max_connections_per_address.unwrap_or(self.default_limit);
            writeln!(
                f,
                "  {}. {} over {} -> {} (at most {} connections per address)",
                i + 1,
                networks.join(", "),
                transports,
                r.grant.as_str(),
                limit
            )?;
        }
        writeln!(f, "  otherwise -> deny")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(networks: &[&str], transports: Option<Vec<Transport>>, access: Grant) -> Rule {
        Rule::from_config(&RuleConfig {
            networks: networks.iter().map(|s| s.to_string()).collect(),
            transports,
            access,
            max_connections_per_address: None,
        })
        .expect("valid rule")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn first_match_wins_by_network_and_transport() {
        let rules = AccessRules::new(
            vec![
                rule(&["127.0.0.2"], None, Grant::Full),
                rule(
                    &["127.0.0.3/32"],
                    Some(vec![Transport::Tcp]),
                    Grant::ReadOnly,
                ),
                rule(
                    &["127.0.0.0/8"],
                    Some(vec![Transport::WebSocket]),
                    Grant::Full,
                ),
                rule(&["::1"], None, Grant::Deny),
            ],
            8,
        );
        assert_eq!(rules.grant(ip("127.0.0.2"), Transport::Tcp), Grant::Full);
        assert_eq!(
            rules.grant(ip("127.0.0.3"), Transport::Tcp),
            Grant::ReadOnly
        );
        assert_eq!(
            rules.grant(ip("127.0.0.3"), Transport::WebSocket),
            Grant::Full
        );
        assert_eq!(rules.grant(ip("127.0.0.3"), Transport::Http), Grant::Deny);
        assert_eq!(rules.grant(ip("::1"), Transport::Tcp), Grant::Deny);
        assert!(rules.denies_everything(ip("::1")));
        assert!(rules.denies_everything(ip("10.0.0.1")));
        assert!(!rules.denies_everything(ip("127.0.0.3")));
        // An IPv4 client on a dual-stack socket is seen as ::ffff:a.b.c.d.
        assert_eq!(
            rules.grant(ip("::ffff:127.0.0.2"), Transport::Tcp),
            Grant::Full
        );
    }

    #[test]
    fn default_rules_keep_loopback_and_protect_the_rest() {
        let rules = AccessRules::new(AccessRules::default_rules(), 64);
        assert_eq!(rules.grant(ip("127.0.0.1"), Transport::Tcp), Grant::Full);
        assert_eq!(rules.grant(ip("::1"), Transport::WebSocket), Grant::Full);
        assert_eq!(
            rules.grant(ip("192.168.1.7"), Transport::Tcp),
            Grant::ReadOnly
        );
        assert_eq!(
            rules.grant(ip("2001:db8::1"), Transport::Http),
            Grant::ReadOnly
        );
        assert_eq!(rules.connection_limit(ip("127.0.0.1")), 64);
    }

    #[test]
    fn limits_come_from_the_first_covering_rule_that_sets_one() {
        let mut limited = rule(&["127.0.0.0/8"], Some(vec![Transport::Tcp]), Grant::Full);
        limited.max_connections_per_address = Some(3);
        let rules = AccessRules::new(vec![limited, rule(&["0.0.0.0/0"], None, Grant::Full)], 50);
        assert_eq!(rules.connection_limit(ip("127.0.0.9")), 3);
        assert_eq!(rules.connection_limit(ip("10.0.0.1")), 50);
    }

    #[test]
    fn bad_rules_are_refused() {
        let config = |networks: Vec<&str>, transports, limit| RuleConfig {
            networks: networks.into_iter().map(String::from).collect(),
            transports,
            access: Grant::Full,
            max_connections_per_address: limit,
        };
        assert_eq!(
            Rule::from_config(&config(vec!["10.0.0.0/33"], None, None)),
            Err(RuleError::Network("10.0.0.0/33".into()))
        );
        assert_eq!(
            Rule::from_config(&config(vec!["lab.example"], None, None)),
            Err(RuleError::Network("lab.example".into()))
        );
        assert_eq!(
            Rule::from_config(&config(vec![], None, None)),
            Err(RuleError::NoNetworks)
        );
        assert_eq!(
            Rule::from_config(&config(vec!["::1"], Some(vec![]), None)),
            Err(RuleError::NoTransports)
        );
        assert_eq!(
            Rule::from_config(&config(vec!["::1"], None, Some(0))),
            Err(RuleError::ZeroLimit)
        );
    }
}
