//! The libp2p swarm of a swarmkv node (built in the next issue).
