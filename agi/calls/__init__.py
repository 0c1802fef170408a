"""What a caller hears and presses: the Dialogue, the consent flow, the marketing flow, prompts.
No SQL and no sockets: storage comes in through small interfaces.
"""
