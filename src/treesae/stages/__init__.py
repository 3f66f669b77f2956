"""Stage glue of the analysis and figure stages (03-06): one function per notebook cell.

``common`` (the runs table, tables and metrics files), ``position`` (03), ``matching`` (04),
``hierarchy`` (05), ``figures`` (06). Nothing is imported here, so that stage 06 reads only the
modules it needs (it never imports the analysis library or the SAEs).
"""
