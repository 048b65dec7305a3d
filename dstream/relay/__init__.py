"""One hop between two running providers: framing, the handshake, validation and
forwarding, the checkpoint ledger, dead letters."""
