"""People in the same CMR space (DESIGN.md section 8): psifr's free-recall data and lag-CRPs, and CMR fitted
to people with the heads' procedure.
"""
