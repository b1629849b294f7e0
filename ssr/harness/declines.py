"""The decline judge: does an answer to a grounded question decline, in the model's own words, to answer it
(say that the passages do not contain the answer)?

The grounded prompts (squad2, nq_rc) give an exact sentence to decline with (`UNANSWERABLE`, defined here), but a
small model says it its own way: "The passage does not contain the answer to the question.", "The passage doesn't
provide enough information to answer the question.". Counting only the exact sentence gives such a model no credit for
declining, which biases the unanswerable rate against a method that keeps the model's own wording (SSR).

The rules, over the output's sentences (lower case, curly quotes straightened):
1. The output is the exact sentence (case, punctuation and a/an/the aside): a decline.
2. Else the first sentence, after a lead-in ("The answer is:", "Unfortunately,", "Based on the passage,"), must
   say the passages lack the answer (`DECLINE`): a passage word with a negated verb ("The text does not
   mention ...", "The passage is not able to provide ..."), or "There is no information ...", "The question
   cannot be answered ...", "I cannot find ...".
3. And nothing may give an answer beside it: not a "but ..." clause without a negation in that sentence ("The
   passage doesn't say exactly, but it was around 1850"), and every later sentence is another decline, a
   description of the passage that answers nothing ("It only mentions ..."), or a courtesy ("Please provide
   ...") without a hedge ("maybe", "probably", "the answer is ...").

The trap avoided: SSR trains on the self answers the judge accepts, so a decline that also asserts content is
not a decline, and where in doubt the rules say "not a decline" (an output that opens with a claim and declines
after it is not one). "The passage is not about X, but about Y" describes the passage and is no decline either.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# What the grounded prompts (tasks/squad2.py, tasks/nq_rc.py) tell the model to say when the passages do not answer
# the question; the gold answer of an unanswerable question. SSR's paper does not publish its wording: this one is
# ours. It lives here, not in a task file, so that the task files can import the judge without a cycle.
UNANSWERABLE = "The passages do not answer the question."


@dataclass(frozen=True)
class Decline:
    declined: bool
    rule: str  # the rule that decided, for a human: "exact sentence", "passage + negated verb", ...

    def __bool__(self) -> bool:
        return self.declined


# What the passages are called, with the words that may stand between that and the verb.
_PASSAGE = (r"(?:the|this|these|those|each|both)\s+(?:given\s+|provided\s+|above\s+|two\s+|three\s+)?"
            r"(?:passages?|texts?|context|documents?|paragraphs?|excerpts?|articles?|sources?|information)"
            r"(?:\s+(?:provided|given|above|below|itself|themselves|here|shown|in\s+question|"
            r"you\s+(?:provided|gave)))?")

# A first sentence that declines, each alternative anchored at the sentence's start (re.match).
DECLINE = {
    # "The passage does not contain / doesn't (explicitly) say / did not mention ..."
    "passage + negated verb": _PASSAGE + r"\s+(?:(?:does|do|did)\s+not|doesn't|don't|didn't)\s+(?:\w+\s+)?"
    r"(?:contain|say|mention|answer|provide|include|give|specify|state|tell|address|cover|have|offer|discuss|"
    r"explain|indicate|reveal|identify|name|describe|clarify|list|refer|hold)\b",
    # "The passage is not able to provide ...", "The information is not provided ..."
    "passage + is not": _PASSAGE + r"\s+(?:is|are|was|were)\s+not\s+(?:able\s+to|mentioned|provided|given|"
    r"stated|specified|available|included|found|clear|explicit)\b",
    # "The text cannot answer / is unable to tell / fails to mention ..."
    "passage + cannot": _PASSAGE + r"\s+(?:cannot|can't|can\s+not|could\s+not|couldn't|(?:is|are)\s+unable\s+to|"
    r"fails?\s+to)\s+(?:be\s+used\s+to\s+)?(?:answer|provide|say|tell|determine|give|mention|specify|help)\b",
    # "The passage lacks ... / makes no mention / says nothing / is silent / is incomplete / has no information"
    "passage + lacks": _PASSAGE + r"\s+(?:lacks?|makes?\s+no\s+mention|says?\s+nothing|"
    r"(?:is|are)\s+(?:silent|incomplete|insufficient)|"
    r"(?:has|have)\s+no\s+(?:information|answer|mention|details?|data))\b",
    # "None of the passages mention ...", "Neither passage answers ..."
    "no passage + verb": r"(?:none\s+of\s+the|neither(?:\s+of\s+the)?)\s+(?:passages?|texts?|documents?)\s+"
    r"(?:contains?|says?|mentions?|answers?|provides?|gives?|includes?|specif(?:y|ies)|states?)\b",
    "there is no information": r"there\s+(?:is|are)\s+no\s+(?:\w+\s+)?(?:information|mention|answer|data|details?|"
    r"indication|reference)\b",
    "no information is given": r"no\s+(?:\w+\s+)?(?:information|answer|mention)\s+(?:is|was|can\s+be)\b",
    # "The answer (to the question) is not provided / cannot be found / remains unclear"
    "the answer is not given": r"the\s+answer(?:\s+to\s+(?:the|this|your)\s+question)?\s+(?:(?:is|was)\s+not|"
    r"isn't|wasn't)\s+(?:provided|given|mentioned|stated|found|included|specified|available|known|clear|"
    r"contained|present|in)\b|the\s+answer(?:\s+to\s+(?:the|this|your)\s+question)?\s+(?:cannot|can't|can\s+not)"
    r"\s+be\s+(?:found|determined|given|provided|answered)\b|the\s+answer(?:\s+to\s+(?:the|this|your)\s+"
    r"question)?\s+(?:is|remains)\s+(?:unclear|unknown)\b",
    "the question cannot be answered": r"(?:the|this)\s+question\s+(?:cannot|can't|can\s+not)\s+be\s+answered\b",
    "not possible to answer": r"it\s+is\s+(?:not\s+possible|impossible)\s+to\s+(?:answer|determine|tell|say|know|find|"
    r"provide|give)\b",
    "not mentioned in the passage": r"(?:it|this)\s+(?:is\s+not|isn't)\s+(?:mentioned|stated|specified|given|said|"
    r"answered|provided)\s+in\s+the\s+(?:passages?|text|context|documents?)\b",
    # the model speaking for itself: "I cannot find ...", "I don't know."
    "I cannot answer": r"(?:i|we)\s+(?:cannot|can't|can\s+not|could\s+not|couldn't|am\s+unable\s+to|"
    r"am\s+not\s+able\s+to|was\s+unable\s+to)\s+(?:find|answer|determine|tell|provide|locate|give|say)\b",
    "I don't know": r"i\s+(?:do\s+not|don't)\s+(?:know|have\s+(?:enough\s+)?(?:information|the\s+answer))\b",
}

# Lead-ins taken off the front of the output before its first sentence is read: what follows "The answer is:" is
# the answer given (which may be a decline); an apology or "Based on the passage," changes nothing.
_LEAD_IN = re.compile(r"(?:(?:the\s+)?answer(?:\s+to\s+(?:the|this)\s+question)?(?:\s+is)?\s*:\s*|"
                      r"(?:unfortunately|sorry|i'm\s+sorry|i\s+am\s+sorry|i\s+apologi[sz]e|however)\s*[,.!]?\s*"
                      r"(?:but\s+)?|(?:based\s+on|according\s+to|from|in)\s+the\s+(?:given\s+|provided\s+)?"
                      r"(?:passages?|text|context|information)(?:\s+(?:provided|given|above))?\s*,\s*)")

# After a decline: a sentence about the passage that answers nothing ("It only mentions ...", "The passage is
# about ..."), or a courtesy. Anything else may assert content, and makes the output no decline.
_ABOUT_PASSAGE = re.compile(r"(?:it|they|" + _PASSAGE + r")\s+(?:only|just|merely)\s+|(?:it|they|" + _PASSAGE +
                            r")\s+(?:is|are)\s+about\b|(?:it|they|" + _PASSAGE + r")\s+(?:focus(?:es)?|talks?)\b")
_COURTESY = re.compile(r"(?:please|if\s+you|i\s+hope|i\s+apologi[sz]e|sorry|thank)\b")
# A hedge or an answer anywhere after the decline: "maybe 1850", "the answer is ...".
_HEDGE = re.compile(r"\b(?:maybe|perhaps|probably|likely|possibly|presumably|i\s+(?:think|believe|guess)|"
                    r"it\s+(?:seems|appears)|(?:the|my)\s+(?:best\s+)?(?:answer|guess)(?:\s+to\s+(?:the|this)\s+"
                    r"question)?\s+(?:is|was|would\s+be|might\s+be|could\s+be|may\s+be))\b")
# In the declining sentence, a "but ..." clause with no negation gives content: "..., but it was around 1850".
_BUT = re.compile(r"(?:,|;|\s)\s*(?:but|however|although|though|yet)\b(?P<clause>.*)")
_NEGATION = re.compile(r"\b(?:not|no|nothing|none|neither|cannot)\b|n't\b")

_SENTENCE_END = re.compile(r"(?<=[.!?;])[\"')\]]*\s+|\n+")


def _words(text: str) -> list[str]:
    """The words of a text, case, punctuation and a/an/the aside (as judges.normalize_answer compares answers; not
    imported from there, so that the judges can import this module)."""
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in ("a", "an", "the")]


def declines(output: str) -> Decline:
    """Whether `output` declines to answer, and the rule that decided (see the module's docstring)."""
    if _words(output) == _words(UNANSWERABLE):
        return Decline(True, "exact sentence")
    text = " ".join(output.replace("\u2019", "'").replace("\u2018", "'").replace("*", "").lower().split())
    text = text.strip(" \"'")
    while (lead := _LEAD_IN.match(text)) and lead.end() > 0:
        text = text[lead.end():].lstrip(" \"'")
    sentences = [s.strip(" \"'") for s in _SENTENCE_END.split(text) if s.strip(" \"'")]
    if not sentences:
        return Decline(False, "empty")
    first, rest = sentences[0], sentences[1:]
    rule = next((name for name, pattern in DECLINE.items() if re.match(pattern, first)), None)
    if rule is None:
        return Decline(False, "no decline in the first sentence")
    but = _BUT.search(first)
    if but and not _NEGATION.search(but["clause"]):
        return Decline(False, f"{rule}, but a 'but' clause gives content")
    for sentence in rest:
        if _HEDGE.search(sentence):
            return Decline(False, f"{rule}, then a hedge or an answer: {sentence[:60]!r}")
        as_passage = re.sub(r"^(?:it|they)\b", "the passage", sentence)  # "It does not say ...": the passage
        declined = any(re.match(p, s) for p in DECLINE.values() for s in (sentence, as_passage))
        if not (declined or _ABOUT_PASSAGE.match(sentence) or _COURTESY.match(sentence)):
            return Decline(False, f"{rule}, then content: {sentence[:60]!r}")
    return Decline(True, rule)
