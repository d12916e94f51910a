"""vidfeat.pipelines"""
