"""A small built-in English vocabulary for the generated GLUE suite (no downloads)."""

PEOPLE = ("teacher doctor farmer child student pilot singer driver baker nurse artist lawyer writer "
          "player sailor soldier painter judge waiter miner dancer hunter cook tailor doctor banker "
          "guard porter clerk actor").split()
ANIMALS = "dog cat horse bird fox rabbit goat sheep mouse duck tiger bear wolf monkey lion".split()
SUBJECTS = list(dict.fromkeys(PEOPLE + ANIMALS))

OBJECTS = ("book letter ball box cake door window chair song map key phone bottle picture bag boat "
           "apple ticket coat basket lamp rope table bicycle cup hat bell clock glove kite").split()

PLACES_MATCHED = "park garden kitchen station school market river forest office library farm beach".split()
PLACES_MISMATCHED = "harbor desert museum airport hospital theater castle village island stadium".split()

# (base form, past tense)
VERBS = [("find", "found"), ("carry", "carried"), ("open", "opened"), ("paint", "painted"),
         ("clean", "cleaned"), ("sell", "sold"), ("watch", "watched"), ("fix", "fixed"),
         ("throw", "threw"), ("hold", "held"), ("take", "took"), ("move", "moved"), ("wash", "washed"),
         ("hide", "hid"), ("break", "broke"), ("bring", "brought"), ("draw", "drew"), ("push", "pushed"),
         ("drop", "dropped"), ("lift", "lifted"), ("pull", "pulled"), ("kick", "kicked")]

ADJECTIVES = ("old young tall small quiet busy red green blue new brown short strong tired loud "
              "calm proud lazy polite shy").split()

POSITIVE = ("good great wonderful brilliant charming delightful excellent funny beautiful moving "
            "lovely superb enjoyable touching warm gripping elegant fresh clever inspiring").split()
NEGATIVE = ("bad awful boring dull terrible weak poor tedious messy painful stupid bland clumsy "
            "lifeless annoying ugly tiresome flat silly horrible").split()
NEUTRAL_ADJS = "red green blue brown new long short black white yellow".split()
FILM_NOUNS = "movie film story plot script cast ending acting music picture".split()

# Paraphrase by swapping words for these synonyms (both directions).
SYNONYMS = {
    "big": "large", "small": "tiny", "quick": "fast", "happy": "glad", "begin": "start",
    "buy": "purchase", "car": "automobile", "child": "kid", "road": "street", "shop": "store",
    "smart": "clever", "quiet": "silent", "angry": "mad", "rich": "wealthy", "talk": "speak",
    "help": "assist", "show": "display", "end": "finish", "house": "home", "money": "cash",
    "job": "work", "choose": "pick", "fix": "repair", "learn": "study", "easy": "simple",
    "cheap": "inexpensive", "old": "aged", "hard": "difficult", "city": "town", "make": "build",
}
SYNONYMS.update({v: k for k, v in list(SYNONYMS.items())})

QUESTION_VERBS = "buy fix learn choose make help show begin end".split()
QUESTION_OBJECTS = "car house shop job road city money".split()
QUESTION_ADJS = "big small quick cheap easy old rich quiet".split()

REASONS = ["because it was raining", "for the first time", "with a close friend", "before the sun rose",
           "after a long day", "while singing loudly", "to win a prize", "on a cold morning"]

# Premise verbs (past tense) and their antonyms: RTE's "not entailed" hypotheses use the antonym.
VERB_ANTONYMS = {"opened": "closed", "lifted": "dropped", "pushed": "pulled", "found": "lost",
                 "bought": "sold", "built": "broke", "filled": "emptied", "raised": "lowered",
                 "locked": "unlocked", "remembered": "forgot"}

TIME_PHRASES = ["on monday", "at noon", "last week", "in the morning", "after dinner", "this year",
                "on sunday", "at midnight", "before lunch", "two days ago"]

# Words STS-B's second sentence brings in: none of them can occur in a first sentence.
NOISE_WORDS = ("purple orange silver golden violet crimson gravel marble copper velvet cotton "
               "feather pebble candle mirror ladder saddle kettle anchor lantern").split()

GIVER_ADJS = "generous kind helpful friendly".split()        # "it" is the one who gives
RECEIVER_ADJS = "hungry poor grateful lonely".split()       # "it" is the one who receives
GIVE_VERBS = ["gave", "handed", "offered", "brought"]
