"""CMR, the Context Maintenance and Retrieval model of free recall as [LI24] simulate it (DESIGN.md section 3):
the model and its exact CRPs, the compiled draws, the conditional lag-CRP, and the parameter grid.
"""
