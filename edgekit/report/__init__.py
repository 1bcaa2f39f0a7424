"""Reading the fleet: the store's reports compared per device, cohort and version, as tables, JSON, CSV or HTML.

    fleetdata   what the store, the inventory and the target profiles hold, as plain data
    analysis    rows, cohorts, drift and what runs where          health    rollout health
    views       the flat tables every output format shares        tables    the terminal's layout
    charts      the memory-latency-quality pictures (chartaxes, chartlayout)   html    one page
"""
