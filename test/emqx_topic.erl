%%--------------------------------------------------------------------
%% EMQX API double: emqx_topic:match/2, wildcard/1, words/1 (MQTT rules:
%% `+' one level, `#' the rest incl. the parent; wildcard-first filters do
%% not match `$' topics).
%%--------------------------------------------------------------------
-module(emqx_topic).

-export([match/2, wildcard/1, words/1]).

match(<<"$", _/binary>>, <<"+", _/binary>>) -> false;
match(<<"$", _/binary>>, <<"#", _/binary>>) -> false;
match(Name, Filter) when is_binary(Name), is_binary(Filter) ->
    match_words(words(Name), words(Filter)).

match_words(_, [<<"#">>]) -> true;
match_words([_ | T], [<<"+">> | F]) -> match_words(T, F);
match_words([W | T], [W | F]) -> match_words(T, F);
match_words([], []) -> true;
match_words(_, _) -> false.

wildcard(Topic) when is_binary(Topic) ->
    lists:any(fun(W) -> W =:= <<"+">> orelse W =:= <<"#">> end, words(Topic)).

words(Topic) -> binary:split(Topic, <<"/">>, [global]).
