"""The fleet: inventories of devices, and the work fanned out over them."""
