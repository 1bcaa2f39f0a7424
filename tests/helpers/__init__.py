"""Test helpers, one module per layer they serve:

    paths        the repository, its example model and data sets, the device Pythons (pyenv)
    cli          running the real `edgekit` command, and what bad input must look like
    bundles      real bundles of the example model (and hostile tars)
    devices      local device folders, the runner as a process, device Pythons that misbehave
    fleet        inventories, fleets of local devices, the store held against the devices
    sshd         real OpenSSH servers on loopback, and a proxy that cuts or slows a link
    reportfleet  a store filled the way a real fleet fills it, for the report tests
    encoder, widemodel, tflitekit, coreonly    models and installs the tests need

Fixtures in these modules are registered for every test by tests/conftest.py.
"""
