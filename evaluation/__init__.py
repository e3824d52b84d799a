"""`slowfast-vgen evaluate`: the paper's metrics, revisit and drift tests, through the product's episode loop."""
