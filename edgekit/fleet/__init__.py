"""Running the fleet: the work fanned out over an inventory's devices.

    inventory   the devices (fleet/*.toml), each with the Endpoint a transport reaches
    fanout      one piece of work on every device, a result per device
    protocol    the runner's command line and JSON, and the device's folder layout
    push        the verbs: push, activate, rollback, gc, repair, status, trust a key
    collect     device reports into the store      status, ledger   what runs where
    rollout     waves gated on the devices' reports (deploy, gates; rollout_ctl: check, abort)
"""
