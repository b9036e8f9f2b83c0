"""Speech library shared by workers (not a worker): speech-to-text engines (``engines``) and
silero voice activity (``vad``). The transcriber and the video worker import it; workers never
import each other.
"""
