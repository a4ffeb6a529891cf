"""[GD23]'s synthetic induction-heads task (DESIGN.md section 7): the task, the 2-layer Transformer and Mamba,
the selective scan, and building the models.
"""
